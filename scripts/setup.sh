#!/usr/bin/env bash
# Install everything fedkafka needs on a fresh Debian machine (idempotent):
# system packages (Java 17, Maven, kcat), a virtualenv with fedkafka and its
# test/dev extras, and Apache Kafka + ZooKeeper from Maven Central into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v kcat >/dev/null || need_apt+=(kcat)
# Prometheus and promtool: `fedkafka local up --monitoring`, rule checks in the tests.
command -v promtool >/dev/null || need_apt+=(prometheus)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
echo "==> pip install -e .[dev]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

echo "==> Apache Kafka and ZooKeeper from Maven Central (cached)"
.venv/bin/fedkafka kafka install
.venv/bin/fedkafka zookeeper install
echo "==> setup done: activate with '. .venv/bin/activate'"
