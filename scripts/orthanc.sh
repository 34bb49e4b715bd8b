#!/usr/bin/env bash
# Orthanc helpers for tests and local experiments (recipe: /work/shared/PACS.md).
#
#   scripts/orthanc.sh install          install orthanc + orthanc-dicomweb if missing (root, apt)
#   source scripts/orthanc.sh           then: orthanc_install / orthanc_start / orthanc_stop
#
# orthanc_start runs a throwaway Orthanc on 127.0.0.1 (free ports, HTTP basic auth, DICOMweb
# plugin, our AE titles in DicomModalities, TCP_NODELAY=1) and exports ORTHANC_PID, ORTHANC_DIR,
# ORTHANC_HTTP, ORTHANC_DICOM, TEST_SCU_PORT, ORTHANC_USER, ORTHANC_PASSWORD. It must run in the
# shell that later calls orthanc_stop (the PID is a shell variable). tests/test_remote.py does not
# need it: its fixture (tests/conftest_remote.py) starts Orthanc itself, with the same settings.

ORTHANC_DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so

orthanc_binary() {
  command -v Orthanc 2> /dev/null || { [ -x /usr/sbin/Orthanc ] && echo /usr/sbin/Orthanc; } || true
}

orthanc_install() {
  local need=()
  [ -n "$(orthanc_binary)" ] || need+=(orthanc)
  [ -e "$ORTHANC_DICOMWEB_PLUGIN" ] || need+=(orthanc-dicomweb)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: Orthanc is missing; run as root: apt-get install -y ${need[*]}" >&2
    return 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
}

orthanc_start() {
  local binary attempt ready
  binary=$(orthanc_binary)
  [ -n "$binary" ] || { echo "error: Orthanc not installed: scripts/orthanc.sh install" >&2; return 2; }
  ORTHANC_USER=${ORTHANC_USER:-ci}
  ORTHANC_PASSWORD=${ORTHANC_PASSWORD:-ci-secret-7Qz}
  ORTHANC_DIR=$(mktemp -d)
  for attempt in 1 2 3 4 5; do  # a lost free-port race makes Orthanc exit 255: new ports, retry
    read -r ORTHANC_HTTP ORTHANC_DICOM TEST_SCU_PORT < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]; [s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
    cat > "$ORTHANC_DIR/orthanc.json" << JSON
{ "Name": "dcmpack-ci", "StorageDirectory": "$ORTHANC_DIR/storage", "IndexDirectory": "$ORTHANC_DIR/index",
  "HttpPort": $ORTHANC_HTTP, "RemoteAccessAllowed": false, "AuthenticationEnabled": true,
  "RegisteredUsers": { "$ORTHANC_USER": "$ORTHANC_PASSWORD" },
  "DicomServerEnabled": true, "DicomAet": "ORTHANC", "DicomPort": $ORTHANC_DICOM,
  "DicomCheckModalityHost": true, "DicomAlwaysAllowEcho": false, "DicomAlwaysAllowStore": false,
  "DicomModalities": {
    "dcmpack": { "AET": "DCMPACK", "Host": "127.0.0.1", "Port": $TEST_SCU_PORT, "AllowEcho": true,
      "AllowStore": true, "AllowFind": true, "AllowGet": true, "AllowMove": true },
    "noget": { "AET": "NOGETSCU", "Host": "127.0.0.1", "Port": $TEST_SCU_PORT, "AllowEcho": true,
      "AllowStore": true, "AllowFind": true, "AllowGet": false, "AllowMove": true } },
  "Plugins": [ "$ORTHANC_DICOMWEB_PLUGIN" ], "DicomWeb": { "Enable": true, "Root": "/dicom-web/" } }
JSON
    TCP_NODELAY=1 "$binary" "$ORTHANC_DIR/orthanc.json" > "$ORTHANC_DIR/orthanc.log" 2>&1 < /dev/null &
    ORTHANC_PID=$!
    ready=0
    for _ in $(seq 300); do
      if curl -fs -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "http://127.0.0.1:$ORTHANC_HTTP/system" \
          > /dev/null 2>&1; then ready=1; break; fi
      kill -0 "$ORTHANC_PID" 2> /dev/null || break
      sleep 0.1
    done
    if [ "$ready" -eq 1 ]; then
      export ORTHANC_PID ORTHANC_DIR ORTHANC_HTTP ORTHANC_DICOM TEST_SCU_PORT ORTHANC_USER \
        ORTHANC_PASSWORD
      return 0
    fi
    kill -9 "$ORTHANC_PID" 2> /dev/null || true
    wait "$ORTHANC_PID" 2> /dev/null || true
    echo "orthanc: start attempt $attempt failed" >&2
  done
  cat "$ORTHANC_DIR/orthanc.log" >&2
  rm -rf "$ORTHANC_DIR"
  return 1
}

orthanc_stop() {
  [ -n "${ORTHANC_PID:-}" ] || return 0
  kill "$ORTHANC_PID" 2> /dev/null || true  # SIGTERM stop takes 2-5 s
  for _ in $(seq 100); do kill -0 "$ORTHANC_PID" 2> /dev/null || break; sleep 0.1; done
  kill -9 "$ORTHANC_PID" 2> /dev/null || true  # the work dir is throwaway
  wait "$ORTHANC_PID" 2> /dev/null || true
  rm -rf "${ORTHANC_DIR:-/nonexistent}"
  unset ORTHANC_PID
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # executed, not sourced
  set -euo pipefail
  case "${1:-}" in
    install) orthanc_install ;;
    *) echo "usage: scripts/orthanc.sh install   (or: source scripts/orthanc.sh; orthanc_start)" >&2
       exit 2 ;;
  esac
fi
