-- Version 2: expired rows are purged at startup with one range delete on
-- stored_at instead of a full table scan.

CREATE INDEX `messages_stored_at` ON `messages` (`stored_at`);
