#!/usr/bin/env bash
# Lint and Molecule-test the Ansible part of fedkafka, from a fresh Debian 12
# machine, as root. Everything it needs is installed or built here:
#
#   podman + runc + debootstrap   (Debian packages)
#   localhost/debian-ansible:bookworm   (systemd base image, built with debootstrap)
#   $FEDKAFKA_ANSIBLE_VENV        (ansible-core, molecule, molecule-plugins[podman], ansible-lint)
#   $FEDKAFKA_CI_CACHE/collections   (unpacked from the `ansible` wheel: Galaxy is unreachable)
#   $FEDKAFKA_CI_CACHE/kafka-<V>/libs   (Apache Kafka jars from Maven Central)
#   $FEDKAFKA_CI_CACHE/wheels     (fedkafka and its dependencies: `pip wheel` of this repo)
#
# Usage: .ci/molecule.sh [--prepare-only] [--no-lint] [--keep] [scenario ...]
#   --no-lint: skip ansible-lint and the offline role checks (tests/ansible).
#   default scenario: federation (TLS and SASL on: a test CA made with openssl in prepare,
#   SSL brokers, TLS + SASL/SCRAM proxy and name service; site.yml, idempotence,
#   produce/consume through the federation, add_cluster.yml and migrate_cluster.yml under
#   load, the hardening checked); kafka_clusters (site.yml without the
#   federation + rolling_restart.yml) on request.  --keep: run `molecule converge` + verify
#   and leave the instances up for debugging (clean up later with
#   `molecule destroy -s SCENARIO` or this script's trap by re-running).
# See docs/adr/0005-ansible-molecule-podman.md for why it looks like this.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FEDKAFKA_CI_CACHE:-/var/cache/fedkafka-ci}
VENV=${FEDKAFKA_ANSIBLE_VENV:-/opt/fedkafka-ansible-venv}
IMAGE=${FEDKAFKA_MOLECULE_IMAGE:-localhost/debian-ansible:bookworm}
IMAGE_RECIPE=3   # bump when build_image changes: an older image is rebuilt
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Pinned so that a run next month lints and behaves like today's.
# pytest (+ the plugins pyproject.toml's settings name) runs tests/ansible.
PY_REQS=(ansible-core==2.19.14 molecule==26.10.0 "molecule-plugins[podman]==26.10.12" ansible-lint==26.10.1
         pytest==9.2.0 pytest-asyncio==1.5.0 pytest-timeout==2.4.0)
ANSIBLE_BUNDLE=ansible==12.3.0   # only its collections are used
COLLECTIONS=(containers/podman ansible/posix community/general)
# Names of everything the scenarios create; the trap removes exactly these.
MOLECULE_NETWORK=fedkafka-molecule
MOLECULE_CONTAINERS=(fk-zk1 fk-kafka-a1 fk-kafka-b1 fk-kafka-c1 fk-fed1)

PREPARE_ONLY=0 LINT=1 KEEP=0 SCENARIOS=()
for arg in "$@"; do
  case $arg in
    --prepare-only) PREPARE_ONLY=1 ;;
    --no-lint) LINT=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) SCENARIOS+=("$arg") ;;
  esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(federation)

T0=$SECONDS
declare -a TIMINGS=()
step() {  # step NAME CMD...: run and time one step
  local name=$1 t=$SECONDS; shift
  echo "::: ${name}"
  "$@"
  TIMINGS+=("$(printf '%-28s %4ds' "$name" $((SECONDS - t)))")
}
report() {
  echo "::: timings"
  local line; for line in "${TIMINGS[@]}"; do echo "    $line"; done
  printf '    %-28s %4ds\n' total $((SECONDS - T0))
}

cleanup() {
  local rc=$?
  [[ $KEEP == 1 ]] && { report; return $rc; }
  if command -v podman >/dev/null; then
    local c
    for c in "${MOLECULE_CONTAINERS[@]}"; do
      podman container exists "$c" 2>/dev/null && podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
    done
    podman network exists "$MOLECULE_NETWORK" 2>/dev/null && podman network rm -f "$MOLECULE_NETWORK" >/dev/null 2>&1 || true
  fi
  report
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_host_packages() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  # netavark + aardvark-dns: containers resolve each other by name on the
  # scenario's network (Debian's podman would otherwise use CNI, without DNS).
  [[ -x /usr/lib/podman/netavark ]] || need+=(netavark)
  [[ -x /usr/lib/podman/aardvark-dns ]] || need+=(aardvark-dns)
  # netavark programs the network's firewall rules with iptables, a Recommends that
  # --no-install-recommends leaves out: without it `molecule create` fails with
  # "netavark: No such file or directory".
  [[ -x /usr/sbin/iptables ]] || need+=(iptables)
  command -v mvn >/dev/null || need+=(maven)
  command -v java >/dev/null || need+=(openjdk-17-jdk-headless)
  python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
  command -v unzip >/dev/null || need+=(unzip)
  # The federation scenario's prepare makes its test CA and certificates with openssl.
  command -v openssl >/dev/null || need+=(openssl)
  if [[ ${#need[@]} -gt 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

configure_podman() {
  # crun fails on this VM ("cgroups in hybrid mode not supported") and podman's
  # default ulimits exceed the VM's hard limits ("setrlimit RLIMIT_NOFILE").
  mkdir -p "$CACHE"
  cat >"$CACHE/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
CONF
  export CONTAINERS_CONF=$CACHE/containers.conf
}

build_image() {
  if podman image exists "$IMAGE"; then
    [[ "$(podman image inspect --format '{{ index .Config.Labels "fedkafka.recipe" }}' "$IMAGE")" == "$IMAGE_RECIPE" ]] && return 0
    podman rmi -f "$IMAGE" >/dev/null
  fi
  local rootfs; rootfs=$(mktemp -d /var/tmp/fedkafka-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" RETURN
  debootstrap --variant=minbase \
    --include=python3,python3-apt,sudo,procps,iproute2,ca-certificates,systemd,systemd-sysv,dbus,curl,netcat-openbsd,openjdk-17-jre-headless \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; return 1; }
  # systemd in a container: nothing that needs real hardware.
  chroot "$rootfs" systemctl mask systemd-udevd.service systemd-udev-trigger.service \
    systemd-remount-fs.service getty.target console-getty.service >/dev/null 2>&1 || true
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
  # No package lists in the image: apt's cache_valid_time must see a stale
  # cache, so roles refresh it on first use.
  # (the apt module dates the cache by the lists directory's mtime).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  touch -d @0 "$rootfs/var/lib/apt/lists"
  : >"$rootfs/etc/machine-id"
  tar --numeric-owner -C "$rootfs" -c . \
    | podman import --change 'CMD ["/bin/sleep","infinity"]' \
        --change "LABEL fedkafka.recipe=$IMAGE_RECIPE" - "$IMAGE" >/dev/null
}

make_venv() {
  local stamp="$VENV/.fedkafka-reqs"
  if [[ -x $VENV/bin/molecule && -f $stamp && "$(cat "$stamp")" == "${PY_REQS[*]}" ]]; then
    return 0
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "${PY_REQS[@]}"
  echo "${PY_REQS[*]}" >"$stamp"
}

unpack_collections() {
  local dest=$CACHE/collections stamp=$CACHE/collections/.bundle c missing=0
  for c in "${COLLECTIONS[@]}"; do [[ -d $dest/ansible_collections/$c ]] || missing=1; done
  [[ $missing == 0 && -f $stamp && "$(cat "$stamp")" == "$ANSIBLE_BUNDLE" ]] && return 0
  local dl; dl=$(mktemp -d /var/tmp/fedkafka-ansible-wheel.XXXXXX)
  "$VENV/bin/pip" download -q --no-deps -d "$dl" "$ANSIBLE_BUNDLE"
  rm -rf "$dest"; mkdir -p "$dest"
  local patterns=()
  for c in "${COLLECTIONS[@]}"; do patterns+=("ansible_collections/$c/*"); done
  unzip -q "$dl"/ansible-*.whl "${patterns[@]}" -d "$dest"
  rm -rf "$dl"
  echo "$ANSIBLE_BUNDLE" >"$stamp"
}

make_kafka_artifact() {
  # Same layout as `fedkafka kafka install --version V`: kafka-V/libs/*.jar.
  local dir=$CACHE/kafka-$KAFKA_VERSION
  if compgen -G "$dir/libs/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then return 0; fi
  rm -rf "$dir"; mkdir -p "$dir"
  sed "s/@KAFKA_VERSION@/$KAFKA_VERSION/" "$REPO/tests/ansible/kafka-artifact-pom.xml" >"$dir/pom.xml"
  mvn -q -B -f "$dir/pom.xml" -Dmaven.repo.local="$CACHE/m2" dependency:copy-dependencies \
    -DoutputDirectory="$dir/libs" -DincludeScope=runtime
  rm -f "$dir/pom.xml"; rm -rf "$dir/target"
}

make_wheels() {
  # Hosts install fedkafka with --no-index from these wheels (role fedkafka). The venv's
  # Python (3.11, as on the Debian 12 hosts) picks the dependencies' binary wheels.
  # fedkafka's own wheel is rebuilt every run; dependency wheels already there are reused.
  mkdir -p "$CACHE/wheels"
  rm -f "$CACHE"/wheels/fedkafka-*.whl
  "$VENV/bin/pip" wheel -q --find-links "$CACHE/wheels" -w "$CACHE/wheels" "$REPO" \
    >"$CACHE/pip-wheel.log" 2>&1 || { tail -20 "$CACHE/pip-wheel.log"; return 1; }
  compgen -G "$CACHE/wheels/fedkafka-*.whl" >/dev/null
}

step "host packages" install_host_packages
configure_podman
step "base image" build_image
step "python venv" make_venv
step "collections" unpack_collections
step "kafka artifact" make_kafka_artifact
step "fedkafka wheels" make_wheels
[[ $PREPARE_ONLY == 1 ]] && exit 0

export PATH=$VENV/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=$CACHE/collections
export FEDKAFKA_KAFKA_ARTIFACT_DIR=$CACHE/kafka-$KAFKA_VERSION
export FEDKAFKA_WHEEL_DIR=$CACHE/wheels
export FEDKAFKA_MOLECULE_IMAGE=$IMAGE
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1
cd "$REPO/ansible"

if [[ $LINT == 1 ]]; then
  step "ansible-lint" ansible-lint --offline
  # Offline role checks: layout, argument specs, preflight failures, rendering.
  # --noconftest: the project's conftest needs the fedkafka package, not installed here.
  step "role checks (pytest)" env FEDKAFKA_ANSIBLE_VENV="$VENV" \
    "$VENV/bin/python" -m pytest --noconftest -p no:cacheprovider -q "$REPO/tests/ansible"
fi
for s in "${SCENARIOS[@]}"; do
  if [[ $KEEP == 1 ]]; then
    step "molecule converge $s" molecule converge -s "$s"
    step "molecule verify $s" molecule verify -s "$s"
  else
    step "molecule test $s" molecule test -s "$s"
  fi
done
