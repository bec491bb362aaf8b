-- Version 3: every row names its sender, so the per-sender quota
-- (--offline-max-bytes-per-sender) holds across a restart; and a row the
-- server cannot load is moved to `quarantine` instead of stopping the start.

ALTER TABLE `messages` ADD COLUMN `sender` VARCHAR;

-- Version 2 kept no sender, but the server set the body's "from" to it on
-- every message it stored. A body that is not JSON keeps a NULL sender
-- (and is set aside at the next start anyway).
UPDATE `messages` SET `sender` = CASE
  WHEN typeof(`body`) = 'text' AND json_valid(`body`)
   AND json_type(`body`, '$.from') = 'text'
  THEN json_extract(`body`, '$.from')
 END;

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
