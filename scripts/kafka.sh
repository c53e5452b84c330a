#!/usr/bin/env bash
# Starts a single-node Apache Kafka broker (KRaft, broker and controller in
# one JVM) on 127.0.0.1 for the tests, and prints its bootstrap address.
#
#   scripts/kafka.sh          start it, or do nothing if it already answers
#   scripts/kafka.sh stop     stop it and delete its data
#
# The broker comes from Maven Central only (scripts/kafka/pom.xml): the jars
# are copied once into $LEDGER_KAFKA_HOME/libs and reused on later runs.
# Each start formats a fresh, empty log directory, so no test sees topics or
# offsets left by an earlier run. Needs java (17+) and mvn on PATH.
#
# Environment: LEDGER_KAFKA_HOME (cache, pid and log; default
# ~/.cache/recovery-ledger/kafka), LEDGER_KAFKA_PORT (19092),
# LEDGER_KAFKA_CONTROLLER_PORT (19093), LEDGER_KAFKA_START_TIMEOUT (90 s).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom=$here/kafka/pom.xml
log_config=$here/kafka/log4j2.properties
kafka_home=${LEDGER_KAFKA_HOME:-$HOME/.cache/recovery-ledger/kafka}
port=${LEDGER_KAFKA_PORT:-19092}
controller_port=${LEDGER_KAFKA_CONTROLLER_PORT:-19093}
start_timeout=${LEDGER_KAFKA_START_TIMEOUT:-90}
bootstrap=127.0.0.1:$port

libs=$kafka_home/libs
config=$kafka_home/server.properties
pid_file=$kafka_home/kafka.pid
log_file=$kafka_home/kafka.log
# Remembers the current log.dirs so that stop (or the next start) can
# delete it: it lives in a temporary folder, not under the cache.
log_dir_file=$kafka_home/log-dir

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

# The pid file alone is not proof: after a reboot or a crash the same pid
# may belong to another process.
broker_pid() {
    local pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A real Kafka request (an admin-client topic listing), not just an open
# port: the broker accepts connections a while before it serves requests.
broker_answers() {
    port_open "$port" || return 1
    timeout 30 java -Xmx128m -XX:TieredStopAtLevel=1 \
        -cp "$libs/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$bootstrap" --list >/dev/null 2>&1
}

wait_until_answering() {
    local deadline=$((SECONDS + start_timeout))

    until broker_answers; do
        # kill -0 rather than broker_pid: just after the fork the child has
        # not yet exec'd java, so its command line does not say kafka yet.
        if ! kill -0 "$(<"$pid_file")" 2>/dev/null; then
            tail -n 40 "$log_file" >&2 || true
            die "the broker exited during startup; full log: $log_file"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 40 "$log_file" >&2 || true
            die "the broker did not answer on $bootstrap within" \
                "${start_timeout}s; log: $log_file;" \
                "'scripts/kafka.sh stop' clears it"
        fi
        sleep 1
    done
}

stop_broker() {
    local pid deadline

    # SIGTERM makes Kafka shut down cleanly; a broker stuck past the
    # deadline is killed, since its data is thrown away anyway.
    if pid=$(broker_pid); then
        kill "$pid"
        deadline=$((SECONDS + 60))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "kafka.sh: broker $pid ignored SIGTERM; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
    fi
    rm -f "$pid_file"

    if [[ -f $log_dir_file ]]; then
        rm -rf "$(<"$log_dir_file")"
        rm -f "$log_dir_file"
    fi
}

# The cache is keyed on the Kafka version in the pom; a copy interrupted
# half-way never gets its stamp, so the next run starts it again.
fetch_jars() {
    local version stamp
    version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
    stamp=$libs/.kafka-$version
    [[ -f $stamp ]] && return 0

    command -v mvn >/dev/null || die "mvn is not on PATH (apt-get install maven)"
    echo "kafka.sh: fetching Apache Kafka $version from Maven Central" >&2
    rm -rf "$libs.partial"
    # Debian's Maven writes colour escape codes to stdout even with -q and
    # -Dstyle.color=never; stdout must carry only the bootstrap address.
    mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs.partial" >&2

    rm -rf "$libs"
    mv "$libs.partial" "$libs"
    touch "$libs/.kafka-$version"
}

write_config() {
    local log_dir=$1
    cat >"$config" <<EOF
# Written by scripts/kafka.sh on every start; edits here are lost.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$log_dir
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

start_broker() {
    local log_dir cluster_id

    command -v java >/dev/null || die "java (17+) is not on PATH"
    for p in "$port" "$controller_port"; do
        if port_open "$p"; then
            die "127.0.0.1:$p is taken by another process; free it or set" \
                "LEDGER_KAFKA_PORT / LEDGER_KAFKA_CONTROLLER_PORT"
        fi
    done

    fetch_jars

    # A fresh log directory each start: KRaft storage is formatted for one
    # cluster id, and tests must not see an earlier run's topics.
    log_dir=$(mktemp -d "${TMPDIR:-/tmp}/recovery-ledger-kafka.XXXXXX")
    echo "$log_dir" >"$log_dir_file"
    write_config "$log_dir"

    # --standalone makes this node the whole controller quorum, as the
    # dynamic quorum (controller.quorum.bootstrap.servers) requires.
    cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)
    java -cp "$libs/*" -Dlog4j2.configurationFile="$log_config" \
        kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$config" >"$log_file" 2>&1 ||
        die "formatting KRaft storage failed; see $log_file"

    # setsid detaches the broker from the caller's terminal and process
    # group, so that ^C on a test run or CI's step ending does not stop it;
    # fd 9 (the lock) is closed so that the broker does not hold it forever.
    setsid java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$log_config" \
        -cp "$libs/*" kafka.Kafka "$config" \
        </dev/null >>"$log_file" 2>&1 9>&- &
    echo $! >"$pid_file"

    wait_until_answering
}

main() {
    mkdir -p "$kafka_home"

    # One run at a time: two concurrent starts would format and launch two
    # brokers on the same ports.
    exec 9>"$kafka_home/kafka.lock"
    flock 9

    case ${1:-start} in
    start)
        if broker_pid >/dev/null; then
            # Already started, perhaps by a run that is still waiting for it.
            wait_until_answering
        else
            stop_broker
            start_broker
        fi
        echo "$bootstrap"
        ;;
    stop)
        stop_broker
        echo "kafka.sh: stopped" >&2
        ;;
    *)
        die "usage: $0 [start|stop]"
        ;;
    esac
}

main "$@"
