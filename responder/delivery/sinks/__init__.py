"""Chat sinks: the Slack Web API and the console / file sink, behind one interface."""
