-- SQLite schema, version 5 to 6.
-- v6: the preliminary verdict, attributed from the flight recorder when the alert arrived, kept
-- beside the capture's verdict so the thread can say whether the capture confirmed or changed it.
ALTER TABLE incidents ADD COLUMN preliminary TEXT;
