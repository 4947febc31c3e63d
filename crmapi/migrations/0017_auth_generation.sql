-- Cached tokens (crmapi/authcache.py): a number that every revocation of a token and every change to a CRM
-- user increments in its own transaction. Each process reads it at most once a second and forgets the tokens
-- it verified when it has moved. One row (id 1), made by the first change.
CREATE TABLE IF NOT EXISTS auth_generation (
    id INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL
);
