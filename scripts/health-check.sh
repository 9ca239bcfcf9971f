#!/usr/bin/env bash
# Pre-deploy health check for the Z-Image-Turbo service.
#
#   scripts/health-check.sh [--timeout SECONDS] [--token TOKEN] [--program NAME] [URL]
#
# --timeout: each request's limit, 1 to 3600 s (default 30). One URL, http(s)://.
#
# Checks, in order: the Supervisor program is RUNNING, or STARTING with the
# service ready (when supervisorctl is installed and knows the program); /health answers; /ready says ready; two
# identical /run requests for a fixed probe prompt, the second of which must be
# a cache hit. Prints a one-screen summary and exits 0 only if every check
# passed, else 1 (2 for bad arguments). Needs curl, and jq or python3.
#
# Environment: ZIMAGE_HEALTH_URL (default http://127.0.0.1:7860),
# ZIMAGE_HEALTH_TOKEN (an API token, when the server has --api-keys).
set -u

url="${ZIMAGE_HEALTH_URL:-http://127.0.0.1:7860}"
timeout=30
token="${ZIMAGE_HEALTH_TOKEN:-}"
program="z-image-turbo"
probe_prompt="health-check probe: a small red cube on a white table"

# usage: the header comment from its usage line on, without the `#` (and no code).
usage() { awk 'NR >= 4 && /^#/ { sub(/^# ?/, ""); print; next } NR >= 4 { exit }' "$0"; }
# value OPTION COUNT: an option that takes a value must have one after it (else
# `shift 2` would fail, leave the argument in place, and loop for ever).
value() {
  if [ "$2" -lt 2 ]; then
    echo "health-check: $1 needs a value" >&2; usage >&2; exit 2
  fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) value "$1" $#; timeout="$2"; shift 2 ;;
    --timeout=*) timeout="${1#*=}"; shift ;;
    --token) value "$1" $#; token="$2"; shift 2 ;;
    --token=*) token="${1#*=}"; shift ;;
    --program) value "$1" $#; program="$2"; shift 2 ;;
    --program=*) program="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "health-check: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      if [ -n "${url_given:-}" ]; then
        echo "health-check: one URL only, got '$url_given' and '$1'" >&2; exit 2
      fi
      url="$1"; url_given="$1"; shift ;;
  esac
done
# 1 to 3600: 0 would turn curl's limit off (the check could hang for ever), and a
# huge number passes here only to make every curl call fail.
case "$timeout" in
  ''|*[!0-9]*|0*) echo "health-check: --timeout needs whole seconds from 1 to 3600, got '$timeout'" >&2; exit 2 ;;
esac
if [ "${#timeout}" -gt 4 ] || [ "$timeout" -gt 3600 ]; then
  echo "health-check: --timeout needs whole seconds from 1 to 3600, got '$timeout'" >&2; exit 2
fi
case "$url" in
  http://?*|https://?*) ;;
  *) echo "health-check: the URL must be http://HOST[:PORT] or https://..., got '$url'" >&2; exit 2 ;;
esac
case "$url" in
  *[[:space:]]*) echo "health-check: the URL must not contain spaces, got '$url'" >&2; exit 2 ;;
esac
url="${url%/}"
command -v curl >/dev/null || { echo "health-check: curl is required" >&2; exit 2; }

# json_get FIELD: read one top-level field of the JSON on stdin.
if command -v jq >/dev/null; then
  json_get() { jq -r --arg f "$1" '.[$f] // empty | tostring'; }
elif command -v python3 >/dev/null; then
  json_get() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }
else
  echo "health-check: jq or python3 is required" >&2; exit 2
fi

auth=()
[ -n "$token" ] && auth=(-H "Authorization: Bearer $token")
[ -z "$token" ] && auth=(-H "X-Namespace: health-check")

failures=0
lines=()
report() {  # report STATUS NAME DETAIL
  lines+=("$(printf '%-4s  %-10s %s' "$1" "$2" "$3")")
  [ "$1" = "FAIL" ] && failures=$((failures + 1))
}

# ms SECONDS: "12.3 ms".
ms() { awk -v s="${1:-0}" 'BEGIN { printf "%.1f ms", s * 1000 }'; }

# why: what went wrong with the last request, in a few words.
why() {
  if [ "$code" = 000 ]; then
    echo "no answer from $url ($(head -c 100 /tmp/health-check.$$.err 2>/dev/null | sed 's/^curl: ([0-9]*) //'))"
  else
    echo "HTTP $code: $(printf '%s' "$body" | head -c 120)"
  fi
}

# request PATH [CURL ARGS...]: sets body, code and seconds; code 000 when nothing answered.
request() {
  local out path="$1"
  shift
  out=$(curl -sS --max-time "$timeout" "${auth[@]}" -w '\n%{http_code} %{time_total}' "$@" "$url$path" 2>/tmp/health-check.$$.err)
  code=$(printf '%s' "$out" | tail -n 1 | cut -d' ' -f1)
  seconds=$(printf '%s' "$out" | tail -n 1 | cut -d' ' -f2)
  body=$(printf '%s' "$out" | sed '$d')
  [ -n "$code" ] || code=000
}

# 1. Supervisor, where it is installed and manages the program.
if command -v supervisorctl >/dev/null; then
  sup=$(supervisorctl status "$program" 2>&1)
  case "$sup" in
    *RUNNING*) report ok supervisor "$(echo "$sup" | tr -s ' ' | cut -c1-70)" ;;
    # Inside `startsecs` (60 s as shipped) Supervisor says STARTING although the
    # service may be ready: judged after the readiness check below.
    *STARTING*) starting="$(echo "$sup" | awk '{ print $1, $2 }')" ;;
    *"no such process"*|*ERROR*"no such"*|*refused*|*"no such file"*|*"unix:///"*) report skip supervisor "no program '$program' here" ;;
    *) report FAIL supervisor "$(echo "$sup" | tr -s ' ' | cut -c1-70)" ;;
  esac
else
  report skip supervisor "supervisorctl not installed"
fi

# 2. Liveness.
request /health
if [ "$code" = 200 ]; then
  report ok health "model $(printf '%s' "$body" | json_get model), device $(printf '%s' "$body" | json_get device), $(ms "$seconds")"
else
  report FAIL health "$(why)"
fi

# 3. Readiness.
request /ready
if [ "$code" = 200 ]; then
  report ok ready "ready, $(ms "$seconds")"
else
  report FAIL ready "$(why)"
fi

# STARTING passes once the service is ready (Supervisor says RUNNING when its
# startsecs are over); until then it fails.
if [ -n "${starting:-}" ]; then
  if [ "$code" = 200 ]; then
    lines=("$(printf '%-4s  %-10s %s' ok supervisor "$starting, service ready")" "${lines[@]}")
  else
    lines=("$(printf '%-4s  %-10s %s' FAIL supervisor "$starting, service not ready")" "${lines[@]}")
    failures=$((failures + 1))
  fi
fi

# 4. Two identical requests: the second must come from the cache.
probe=(-G --data-urlencode "prompt=$probe_prompt" -d width=256 -d height=256 -d seed=1)
request /run "${probe[@]}"
if [ "$code" = 200 ]; then
  report ok generate "$(printf '%s' "$body" | json_get cache): $(ms "$(printf '%s' "$body" | json_get duration)") in the server, $(ms "$seconds") in all"
  request /run "${probe[@]}"
  tier=$(printf '%s' "$body" | json_get cache)
  case "$code:$tier" in
    200:memory|200:disk|200:redis) report ok cache-hit "$tier hit: $(ms "$(printf '%s' "$body" | json_get duration)") in the server, $(ms "$seconds") in all" ;;
    200:*) report FAIL cache-hit "second identical request was '$tier', not a hit" ;;
    *) report FAIL cache-hit "$(why)" ;;
  esac
else
  report FAIL generate "$(why)"
  report FAIL cache-hit "not tried"
fi
rm -f /tmp/health-check.$$.err

echo "Z-Image-Turbo health check: $url"
printf '%s\n' "${lines[@]}"
if [ "$failures" -eq 0 ]; then
  echo "PASS: all checks passed"
  exit 0
fi
echo "FAIL: $failures check(s) failed"
exit 1
