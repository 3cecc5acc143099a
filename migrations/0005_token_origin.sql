-- Origin binding: a connection remembers the origin (scheme, lower-cased host, explicit port) of
-- the token endpoint its refresh token was imported or obtained for, and a refresh is never sent
-- to another origin. Existing connections are bound to their provider's current token_url.
ALTER TABLE connections ADD COLUMN token_origin text;

WITH parts AS (
  SELECT c.tenant_id, c.id,
         lower(substring(p.token_url FROM '^([A-Za-z][A-Za-z0-9+.-]*)://')) AS scheme,
         regexp_replace(substring(p.token_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'),
                        '^.*@', '') AS authority
    FROM connections c
    JOIN providers p ON p.tenant_id = c.tenant_id AND p.id = c.provider_id
), split AS (
  SELECT tenant_id, id, scheme,
         lower(coalesce(substring(authority FROM '^(\[[^\]]*\])'),
                        substring(authority FROM '^([^:]*)'))) AS host,
         coalesce(substring(authority FROM ':([0-9]+)$'),
                  CASE scheme WHEN 'https' THEN '443' ELSE '80' END) AS port
    FROM parts
)
UPDATE connections c SET token_origin = s.scheme || '://' || s.host || ':' || s.port
  FROM split s
 WHERE c.tenant_id = s.tenant_id AND c.id = s.id;

ALTER TABLE connections ALTER COLUMN token_origin SET NOT NULL;
