"""The responder's HTTP front: the Alertmanager webhook's wire format and its group-commit writer."""
