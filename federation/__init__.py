"""fedkafka: many physical Apache Kafka clusters presented to clients as one."""

NAME = "fedkafka"
__version__ = "0.1.0"
