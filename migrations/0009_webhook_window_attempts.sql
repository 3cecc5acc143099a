-- The attempts of the current retry window. `attempts` counts every attempt a delivery ever had
-- (shown in the delivery list); the back-off counts only this window's, so a manual retry of a
-- dead letter starts again at TOKEND_WEBHOOK_RETRY_BASE instead of at the cap.
ALTER TABLE webhook_deliveries
  ADD COLUMN window_attempts integer NOT NULL DEFAULT 0;
UPDATE webhook_deliveries SET window_attempts = attempts;
