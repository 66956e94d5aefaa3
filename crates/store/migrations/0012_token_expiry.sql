-- Admin tokens expire (Unix seconds). Tokens issued before expiry existed get 90 days from the
-- upgrade, the default lifetime of a new token.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE api_tokens SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) + 90 * 86400;
