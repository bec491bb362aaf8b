-- Offline store, schema version 2 (v1 plus upgrade-to-v2.sql).
-- Each row is one message held for a disconnected peer; seq is the global
-- insertion order, which is also the delivery order within a recipient.

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
);

CREATE INDEX `messages_stored_at` ON `messages` (`stored_at`);
