#!/usr/bin/env bash
# The dashboard's browser tests drive Debian's chromium (playwright's own download is not
# reachable). Idempotent: does nothing when chromium is on PATH; never fails the build (the
# browser tests then skip, saying why).
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
        && exit 0
fi
echo "ensure-chromium: could not install chromium; the dashboard's browser tests will skip" >&2
exit 0
