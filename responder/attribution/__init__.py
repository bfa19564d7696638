"""Attribution: from kernel and trace evidence to a fault domain with a confidence, and what that
confidence has meant in the lab (calibration)."""
