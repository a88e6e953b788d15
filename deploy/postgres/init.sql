-- Runs once, when the postgres volume is first initialised
-- (docker-entrypoint-initdb.d). It is NOT re-run on an existing volume.
--
-- The entrypoint has already created the superuser ($POSTGRES_USER) and the
-- database $POSTGRES_DB (= "orchestrion", used for LangGraph checkpoints).
-- Langfuse gets its own database on the same server, owned by the same role.
-- No passwords here: every credential comes from .env via compose.yaml.

SELECT 'CREATE DATABASE langfuse'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'langfuse')\gexec
