"""Slack: the slack-bolt app (events, slash commands, buttons) and its command grammar."""
