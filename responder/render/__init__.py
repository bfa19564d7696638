"""What people see of an incident: the chat thread's messages, the incident page and its chart,
and every link the responder makes."""
