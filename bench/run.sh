#!/usr/bin/env bash
# The pipeline benchmark in one command: builds the agent, the hub and the benchmark (release),
# then runs every scenario. Options go to `exchange-bench pipeline` (see --help), e.g.
#   bench/run.sh                      # 1,000,000 rows, every scenario
#   bench/run.sh --rows 20000 --change-seconds 5     # a quick smoke run
#   bench/run.sh --rows 10000000 --only agent-pg,agent-pg-noindex,agent-pg-scale,agent-pg-noindex-scale
#                                     # the 10,000,000-row check (scale rows default to 1,000,000)
# Needs PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306, root)
# running, the psql and mariadb clients, and python3 (sling is installed from PyPI into
# <target>/bench-venv when missing). The binaries go where cargo puts them: $CARGO_TARGET_DIR
# when set, else target/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p exchange-agent -p exchange-hub -p exchange-bench
exec "${CARGO_TARGET_DIR:-target}/release/exchange-bench" pipeline "$@"
