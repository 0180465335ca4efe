#!/usr/bin/env bash
# A second local broker whose client listener is SASL_PLAINTEXT (PLAIN and SCRAM-SHA-256), to run
# sluicegate (or its tests) against an authenticating Kafka. Same commands as kafka.sh, which
# does the work; only the instance differs: its own ports, data dir and users, so it runs beside
# the PLAINTEXT broker on 9092 without touching it.
#
#   infra/kafka/kafka-sasl.sh start     last stdout line is the bootstrap address
#   infra/kafka/kafka-sasl.sh stop | status | fetch
#
# Environment (each defaults as shown; kafka.sh's own variables are set from these):
#   SLUICEGATE_KAFKA_SASL_PORT             SASL_PLAINTEXT port, default 19092 (127.0.0.1 only)
#   SLUICEGATE_KAFKA_SASL_CONTROLLER_PORT  controller port, default 19093
#   SLUICEGATE_KAFKA_SASL_DATA             data dir, default $SLUICEGATE_HOME/kafka/data-sasl
#   SLUICEGATE_KAFKA_SASL_USERS            "user:password,...", default
#                                          "admin:admin-secret,sluicegate:sluicegate-secret"
#                                          (the first is the broker's own; SCRAM credentials are
#                                          written when the data dir is first formatted)
#   SLUICEGATE_KAFKA_SASL_HEAP_OPTS        default "-Xmx512m -Xms128m"
#
# Then, for example:
#   SLUICEGATE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092 \
#   SLUICEGATE_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT SLUICEGATE_KAFKA__SASL_MECHANISM=SCRAM-SHA-256 \
#   SLUICEGATE_KAFKA__SASL_USERNAME=sluicegate SLUICEGATE_KAFKA__SASL_PASSWORD=sluicegate-secret \
#   sluicegate topics
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
BASE="${SLUICEGATE_HOME:-$HOME/.sluicegate}/kafka"

# Never inherit the PLAINTEXT broker's ports or data dir from the caller's environment.
export SLUICEGATE_KAFKA_PORT="${SLUICEGATE_KAFKA_SASL_PORT:-19092}"
export SLUICEGATE_KAFKA_CONTROLLER_PORT="${SLUICEGATE_KAFKA_SASL_CONTROLLER_PORT:-19093}"
export SLUICEGATE_KAFKA_DATA="${SLUICEGATE_KAFKA_SASL_DATA:-$BASE/data-sasl}"
export SLUICEGATE_KAFKA_SASL_USERS="${SLUICEGATE_KAFKA_SASL_USERS:-admin:admin-secret,sluicegate:sluicegate-secret}"
export SLUICEGATE_KAFKA_HEAP_OPTS="${SLUICEGATE_KAFKA_SASL_HEAP_OPTS:--Xmx512m -Xms128m}"

exec bash "$SCRIPT_DIR/kafka.sh" "$@"
