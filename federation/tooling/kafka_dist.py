"""Apache Kafka and ZooKeeper on demand: resolve, cache and describe runnable distributions.

A *distribution* is a directory holding ``libs/*.jar`` (everything the broker and
the Kafka tools need on the class path) and a logging configuration under
``config/``. It comes from one of:

* Maven Central through ``mvn`` (default): ``org.apache.kafka:kafka_2.13:V`` and
  ``kafka-tools`` with their runtime dependencies, plus a log4j binding;
* the official release tarball, from a URL or a local file, checked against a
  pinned SHA-512.

Installing twice reuses the cache (a ``.complete`` marker is written last, so an
interrupted install is redone rather than trusted).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from federation.core.errors import ConfigError, FedKafkaError

DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_ZOOKEEPER_VERSION = "3.8.4"
ZK_MAX_ZNODE = 16 << 20  # jute.maxbuffer for the ZooKeeper we run
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

# Logging bindings per Kafka line: 4.x logs through log4j2, 3.x through reload4j.
_LOG4J2 = "2.24.3"
_SLF4J2 = "2.0.17"

_LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

_LOG4J1_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
"""

_LOGBACK_XML = """\
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>[%d] %level %msg \\(%logger\\)%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def cache_dir() -> Path:
    """The root of fedkafka's download cache (``$FEDKAFKA_CACHE`` or ``~/.cache/fedkafka``)."""
    env = os.environ.get("FEDKAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "fedkafka").resolve()


@dataclass(frozen=True, slots=True)
class KafkaDist:
    """A runnable Kafka distribution in the cache."""

    version: str
    home: Path

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def classpath(self) -> str:
        return str(self.libs / "*")

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])

    def log_options(self) -> list[str]:
        """JVM options that point Kafka's logging at our console configuration."""
        if self.major >= 4:
            return [f"-Dlog4j2.configurationFile={self.home / 'config' / 'log4j2.properties'}"]
        return [f"-Dlog4j.configuration=file:{self.home / 'config' / 'log4j.properties'}"]

    def java_command(self, main_class: str, *args: str, heap: str = "256m") -> list[str]:
        """A ``java`` command line running ``main_class`` from this distribution."""
        return [
            java_executable(),
            f"-Xmx{heap}",
            f"-Xms{min_heap(heap)}",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            *self.log_options(),
            "-cp",
            self.classpath,
            main_class,
            *args,
        ]

    # Tool entry points moved between Kafka 3.x and 4.x.
    @property
    def storage_tool(self) -> str:
        return "kafka.tools.StorageTool"

    @property
    def console_producer(self) -> str:
        return "org.apache.kafka.tools.ConsoleProducer" if self.major >= 4 else (
            "kafka.tools.ConsoleProducer")

    @property
    def console_consumer(self) -> str:
        return "org.apache.kafka.tools.consumer.ConsoleConsumer" if self.major >= 4 else (
            "kafka.tools.ConsoleConsumer")

    @property
    def producer_perf(self) -> str:
        return "org.apache.kafka.tools.ProducerPerformance"

    @property
    def consumer_perf(self) -> str:
        return "org.apache.kafka.tools.ConsumerPerformance"


@dataclass(frozen=True, slots=True)
class ZooKeeperDist:
    """A runnable ZooKeeper distribution in the cache."""

    version: str
    home: Path

    @property
    def classpath(self) -> str:
        return str(self.home / "libs" / "*")

    def java_command(self, config: Path, heap: str = "128m") -> list[str]:
        return [
            java_executable(),
            f"-Xmx{heap}",
            f"-Xms{min_heap(heap)}",
            "-XX:+UseSerialGC",
            f"-Dlogback.configurationFile={self.home / 'config' / 'logback.xml'}",
            "-Dzookeeper.admin.enableServer=false",
            # A map of 60 clusters x 1,000 topics is ~2 MiB: above ZooKeeper's 1 MiB default.
            f"-Djute.maxbuffer={ZK_MAX_ZNODE}",
            "-Dzookeeper.4lw.commands.whitelist=ruok,mntr,srvr",
            "-cp",
            self.classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(config),
        ]


def min_heap(heap: str) -> str:
    """A small initial heap: a quarter of ``heap`` (``"256m"`` → ``"64m"``)."""
    m = re.fullmatch(r"(\d+)([mMgG])", heap)
    if not m:
        raise ConfigError(f"heap size {heap!r} is not like '256m' or '1g'; pass e.g. --heap 256m")
    mb = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    return f"{max(16, mb // 4)}m"


def java_executable() -> str:
    """The ``java`` to run, or a clear error when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise FedKafkaError(
            "java was not found on PATH; install a Java 17+ runtime "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    return found


def _check_version(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise ConfigError(
            f"Kafka version {version!r} is not a release number like 4.1.1 or 3.9.1; "
            "pass --version X.Y.Z"
        )


def _kafka_pom(version: str) -> str:
    major = int(version.split(".", 1)[0])
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        ("org.apache.kafka", "kafka-tools", version),
    ]
    if major >= 4:
        deps += [
            ("org.apache.logging.log4j", "log4j-slf4j2-impl", _LOG4J2),
            ("org.apache.logging.log4j", "log4j-core", _LOG4J2),
            ("org.slf4j", "slf4j-api", _SLF4J2),
        ]
    else:
        deps += [
            ("org.slf4j", "slf4j-reload4j", "1.7.36"),
            ("ch.qos.reload4j", "reload4j", "1.2.25"),
        ]
    return _pom("kafka-dist", deps, pinned=[("org.slf4j", "slf4j-api", _SLF4J2)] if major >= 4
                else [])


def _pom(
    artifact: str,
    deps: list[tuple[str, str, str]],
    pinned: list[tuple[str, str, str]] | None = None,
) -> str:
    def dep(g: str, a: str, v: str) -> str:
        return (f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                f"<version>{v}</version></dependency>")

    management = ""
    if pinned:
        management = ("<dependencyManagement><dependencies>"
                      + "".join(dep(*p) for p in pinned)
                      + "</dependencies></dependencyManagement>")
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        "<modelVersion>4.0.0</modelVersion>"
        f"<groupId>fedkafka</groupId><artifactId>{artifact}</artifactId>"
        "<version>1</version><packaging>pom</packaging>"
        f"{management}<dependencies>{''.join(dep(*d) for d in deps)}</dependencies>"
        "</project>"
    )


def _run_mvn(pom: str, libs: Path, what: str) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise FedKafkaError(
            "mvn was not found on PATH; install Maven (`apt-get install maven`) "
            "or install from a release tarball with --tarball-url/--tarball-file"
        )
    with tempfile.TemporaryDirectory(prefix="fedkafka-mvn-") as tmp:
        (Path(tmp) / "pom.xml").write_text(pom)
        extra = []
        if os.environ.get("FEDKAFKA_MAVEN_SETTINGS"):
            extra += ["-s", os.environ["FEDKAFKA_MAVEN_SETTINGS"]]
        if os.environ.get("FEDKAFKA_MAVEN_REPO"):
            extra.append(f"-Dmaven.repo.local={os.environ['FEDKAFKA_MAVEN_REPO']}")
        proc = subprocess.run(
            [mvn, "-B", "-q", *extra, "-f", str(Path(tmp) / "pom.xml"),
             "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
             "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False, timeout=1800,
        )
    if proc.returncode == 0:
        return
    out = proc.stdout + proc.stderr
    if re.search(r"Could not find artifact|was not found in", out):
        raise FedKafkaError(
            f"{what} is not on Maven Central (unknown version?); "
            "pass an existing release with --version, e.g. 4.1.1 or 3.9.1"
        )
    if re.search(r"Could not transfer|UnknownHost|Connection refused|timed out|No plugin found|"
                 r"Network is unreachable|Unable to connect|Could not resolve host", out):
        raise FedKafkaError(
            f"Maven Central could not be reached while resolving {what}; check the network "
            "or a Maven mirror in ~/.m2/settings.xml, or install from a release tarball "
            "with --tarball-file/--tarball-url"
        )
    tail = "\n".join(out.strip().splitlines()[-15:])
    raise FedKafkaError(f"mvn failed while resolving {what}:\n{tail}")


def _prepare_dir(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as e:
        raise FedKafkaError(
            f"cannot write to the cache directory {target.parent} ({e.strerror}); "
            "set FEDKAFKA_CACHE to a writable directory"
        ) from e
    return staging


# Bumped whenever what an install puts in the cache changes: older installs are redone.
RECIPE = "2"


def _complete(home: Path) -> bool:
    try:
        return (home / ".complete").read_text().strip() == RECIPE
    except OSError:
        return False


def _finish(staging: Path, target: Path) -> None:
    (staging / ".complete").write_text(RECIPE + "\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _write_log_configs(home: Path) -> None:
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
    (config / "log4j.properties").write_text(_LOG4J1_PROPERTIES)


def installed_kafka(version: str = DEFAULT_KAFKA_VERSION) -> KafkaDist | None:
    """The cached distribution for ``version``, or None when not installed."""
    home = cache_dir() / "kafka" / version
    if _complete(home):
        return KafkaDist(version=version, home=home)
    return None


def install_kafka(
    version: str = DEFAULT_KAFKA_VERSION,
    *,
    tarball_url: str | None = None,
    tarball_file: Path | None = None,
    sha512: str | None = None,
    force: bool = False,
) -> tuple[KafkaDist, bool]:
    """Install Kafka ``version`` into the cache; returns (dist, freshly_installed)."""
    _check_version(version)
    existing = installed_kafka(version)
    if existing and not force:
        return existing, False
    target = cache_dir() / "kafka" / version
    staging = _prepare_dir(target)
    try:
        if tarball_url or tarball_file:
            _install_from_tarball(staging, version, tarball_url, tarball_file, sha512)
        else:
            _run_mvn(_kafka_pom(version), staging / "libs", f"Apache Kafka {version}")
        _write_log_configs(staging)
        _finish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return KafkaDist(version=version, home=target), True


def _install_from_tarball(
    staging: Path,
    version: str,
    url: str | None,
    file: Path | None,
    sha512: str | None,
) -> None:
    if not sha512:
        raise ConfigError(
            "installing from a tarball needs its pinned checksum; pass --sha512 HEX "
            "(from the .sha512 file published next to the release)"
        )
    if file is None:
        assert url is not None
        if not url.startswith(("https://", "http://", "file://")):
            raise ConfigError(f"--tarball-url {url!r} must be an http(s):// or file:// URL")
        file = staging / "download.tgz"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, file.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(resp, out)
        except OSError as e:
            raise FedKafkaError(
                f"could not download {url} ({e}); check the URL or use --tarball-file"
            ) from e
    if not file.exists():
        raise ConfigError(f"--tarball-file {file} does not exist")
    digest = hashlib.sha512()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    want = re.sub(r"\s+", "", sha512).lower()
    if digest.hexdigest() != want:
        raise FedKafkaError(
            f"checksum mismatch for {file}: got sha512 {digest.hexdigest()[:16]}…, "
            f"expected {want[:16]}…; the download is corrupt or the pinned checksum is wrong"
        )
    with tarfile.open(file) as tar:
        tar.extractall(staging / "unpacked", filter="data")
    roots = list((staging / "unpacked").iterdir())
    root = roots[0] if len(roots) == 1 else staging / "unpacked"
    if not (root / "libs").is_dir():
        raise FedKafkaError(f"{file} does not look like a Kafka release (no libs/ directory)")
    shutil.move(str(root / "libs"), staging / "libs")
    shutil.rmtree(staging / "unpacked")
    if file.parent == staging:
        file.unlink()
    if not list((staging / "libs").glob(f"kafka_2.13-{version}*.jar")):
        raise FedKafkaError(f"{file} is not Kafka {version} (no kafka_2.13-{version}.jar inside)")


def installed_zookeeper(version: str = DEFAULT_ZOOKEEPER_VERSION) -> ZooKeeperDist | None:
    home = cache_dir() / "zookeeper" / version
    if _complete(home):
        return ZooKeeperDist(version=version, home=home)
    return None


def install_zookeeper(
    version: str = DEFAULT_ZOOKEEPER_VERSION, *, force: bool = False
) -> tuple[ZooKeeperDist, bool]:
    """Install ZooKeeper ``version`` from Maven Central into the cache."""
    if not _VERSION_RE.match(version):
        raise ConfigError(f"ZooKeeper version {version!r} is not like 3.8.4; pass --version X.Y.Z")
    existing = installed_zookeeper(version)
    if existing and not force:
        return existing, False
    target = cache_dir() / "zookeeper" / version
    staging = _prepare_dir(target)
    try:
        _run_mvn(
            _pom("zookeeper-dist", [
                ("org.apache.zookeeper", "zookeeper", version),
                # The server needs these at start-up; ZooKeeper's POM marks them provided.
                ("io.dropwizard.metrics", "metrics-core", "4.1.12.1"),
                ("org.xerial.snappy", "snappy-java", "1.1.10.5"),
            ]),
            staging / "libs",
            f"Apache ZooKeeper {version}",
        )
        (staging / "config").mkdir()
        (staging / "config" / "logback.xml").write_text(_LOGBACK_XML)
        _finish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ZooKeeperDist(version=version, home=target), True
