-- Offline store, schema version 3 (the newest; equal to v1 plus every upgrade).
-- Each row of messages is one message held for a disconnected peer; seq is
-- the global insertion order, which is also the delivery order within a
-- recipient. Text columns hold exactly the UTF-8 of what the server stored.
-- `sender` (the id that sent the message, NULL when unknown) comes last, as
-- version 3 added it with ALTER TABLE.

CREATE TABLE `version`
(
 `version` INTEGER -- contains one row
);

CREATE TABLE `messages`
(
 `seq` INTEGER PRIMARY KEY, -- assigned by the server, strictly increasing
 `recipient` VARCHAR NOT NULL,
 `message_id` VARCHAR NOT NULL,
 `stored_at` REAL NOT NULL, -- seconds since the epoch
 `body` TEXT NOT NULL -- the message as JSON, as its recipient receives it
, `sender` VARCHAR);

CREATE INDEX `messages_stored_at` ON `messages` (`stored_at`);

-- Rows the server could not load at a start (not UTF-8, not JSON, not a
-- valid id, ...), moved here with the reason; the server never reads them.
CREATE TABLE `quarantine`
(
 `seq` INTEGER NOT NULL, -- the row's seq in messages
 `quarantined_at` REAL NOT NULL, -- seconds since the epoch
 `reason` TEXT NOT NULL, -- why the server could not load it
 `recipient` BLOB, -- the row's columns, byte for byte as they were
 `message_id` BLOB,
 `sender` BLOB,
 `stored_at`,
 `body` BLOB
);
