"""Kafka's own command-line tools (kafka-configs.sh, kafka-consumer-groups.sh,
kafka-delete-records.sh...) run from the installed jars, quietly (warnings to stderr)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from federation.tooling.kafka_dist import KafkaDist

_QUIET_LOG4J2 = """status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""
_QUIET_LOG4J = """log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %m%n
"""

#: Main classes of the tools, by Kafka major version (4.x moved most of them to tools).
TOOLS = {
    "configs": ("kafka.admin.ConfigCommand", "kafka.admin.ConfigCommand"),
    "consumer-groups": ("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                        "kafka.admin.ConsumerGroupCommand"),
    "delete-records": ("org.apache.kafka.tools.DeleteRecordsCommand",
                       "kafka.admin.DeleteRecordsCommand"),
    "topics": ("org.apache.kafka.tools.TopicCommand", "kafka.admin.TopicCommand"),
}

Tool = Callable[..., subprocess.CompletedProcess[str]]


def java_tool(dist: KafkaDist, folder: Path, tool: str) -> Tool:
    """A runner: ``run(bootstrap, *args)`` runs the tool with ``--bootstrap-server``."""
    if dist.major >= 4:
        config = folder / "log4j2.properties"
        config.write_text(_QUIET_LOG4J2)
        logging = f"-Dlog4j2.configurationFile={config}"
    else:
        config = folder / "log4j.properties"
        config.write_text(_QUIET_LOG4J)
        logging = f"-Dlog4j.configuration=file:{config}"
    main = TOOLS[tool][0 if dist.major >= 4 else 1]

    def run(bootstrap: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = dist.java_command(main, "--bootstrap-server", bootstrap, *args)
        # Quiet logging, and quick start-up for a short-lived tool.
        command = [c for c in command if not c.startswith("-Dlog4j")]
        command[1:1] = [logging, "-XX:TieredStopAtLevel=1"]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    return run
