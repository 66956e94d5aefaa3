-- Admin tokens expire (Unix seconds). Tokens issued before expiry existed get 90 days from the
-- upgrade, the default lifetime of a new token.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE api_tokens SET expires_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) + 90 * 86400;
