#!/usr/bin/env bash
# Runs inside ../shared/tools/systemd-sandbox (a real systemd as PID 1, offline wheelhouse, the
# project read-only at /usr/src/project): installs the sidecar exactly as README.md "Run with
# systemd" says — its install block is taken from the README itself — against a local fake API,
# then checks what the unit promises. Prints one PASS/FAIL line per check and exits 1 on any FAIL.
set -uo pipefail
cd /usr/src/project

KEY="sandbox-key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN=/run/forestreet/token
FAKE=http://127.0.0.1:8080
failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
check() { # check "what" command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
prop() { systemctl show -P "$1" forestreet-sidecar; }
session_requests() {
  python3 -c 'import json, urllib.request as u; print(json.load(u.urlopen("'$FAKE'/_fake/stats", timeout=5))["sessionRequests"])'
}
fake_script() {
  python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request("'$FAKE'/_fake/script", data=sys.argv[1].encode(), headers={"Content-Type": "application/json"}), timeout=5)' "$1"
}
wait_for() { # wait_for SECONDS command...: poll every 0.1 s
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}
is_active() { [ "$(systemctl is-active forestreet-sidecar)" = active ]; }
more_requests_than() { [ "$(session_requests)" -gt "$1" ]; }
replaced_and_active() { [ "$(prop MainPID)" != "$1" ] && is_active; }

echo "== systemd: $(systemctl --version | head -n 1)"

# --- 1. The README's install block, literally: only sudo dropped and the key pasted for sudoedit.
readme_block() { # the first ```sh block after the line holding $1
  awk -v marker="$1" 'index($0, marker) { found = 1 } found && /^```sh/ { inside = 1; next }
    inside && /^```/ { exit } inside { print }' README.md
}
install_block=$(readme_block "<!-- systemd-install")
if [ -z "$install_block" ]; then
  echo "FAIL: no install block after "<!-- systemd-install" in README.md"
  exit 1
fi
echo "== README install block, as run:"
script=$(printf '%s\n' "$install_block" |
  sed -e 's/^sudo //' \
    -e "s|^sudoedit \(/[^ ]*\).*|printf '%s\\\\n' \"\$KEY\" >\1|" \
    -e '/^journalctl /d' -e '/^systemctl status /d' \
    -e 's/systemctl enable --now \(.*\)/systemctl enable \1/')
printf '%s\n' "$script" | sed 's/^/    /'
if KEY=$KEY bash -euo pipefail -c "$script" >/tmp/install.log 2>&1; then
  pass "README install block runs as written"
else
  fail "README install block runs as written"
  sed 's/^/    /' /tmp/install.log
  exit 1
fi

# The operator's one edit: the local fake API instead of Forestreet.
sed -i 's|base_url: https://rest.forestreet.com|base_url: http://127.0.0.1:8080|' \
  /etc/forestreet-sidecar/config.yaml
cat >/etc/systemd/system/fake-api.service <<'EOF'
[Service]
Type=exec
DynamicUser=yes
ExecStart=/usr/local/bin/forestreet-sidecar fake-api --host 127.0.0.1 --port 8080 --lifetime 3600
EOF
systemctl daemon-reload
systemctl start fake-api
wait_for 20 session_requests >/dev/null 2>&1 || fail "fake API answers"

# --- 2. check-config, as README says, shows what the service runs with.
check_cmd=$(grep -o 'FORESTREET_SIDECAR_API_KEY_FILE=[^`]*check-config' README.md | head -n 1 | tr -s ' \n' ' ')
echo "== $check_cmd"
if out=$(env $check_cmd 2>&1); then
  printf '%s\n' "$out" | sed 's/^/    /'
  check "check-config shows path $TOKEN" grep -q "path: $TOKEN" <<<"$out"
  check "check-config shows group forestreet" grep -q "group: forestreet" <<<"$out"
  check "check-config shows no key" bash -c '! grep -qF -- "$1" <<<"$2"' _ "$KEY" "$out"
else
  fail "check-config exits 0: $out"
fi

# --- 3. Active only once the token exists: the fake holds its first answer for 4 s.
fake_script '[{"delay": 4}]'
systemctl start --no-block forestreet-sidecar
seen_activating=0
for _ in $(seq 1 300); do
  state=$(systemctl is-active forestreet-sidecar) # the state first: a token may follow it
  [ "$state" = active ] && break
  [ "$state" = activating ] && [ ! -e "$TOKEN" ] && seen_activating=$((seen_activating + 1))
  sleep 0.1
done
echo "== polled 'activating' without a token $seen_activating times; now $(systemctl is-active forestreet-sidecar)"
check "the unit waited in 'activating' while the first answer was held" test "$seen_activating" -ge 10
check "the unit becomes active" is_active
check "the token exists once active" test -s "$TOKEN"
written=$(stat -c %.6Y "$TOKEN")
active_at=$(date -d "$(systemctl show -P ActiveEnterTimestamp --timestamp=us+utc forestreet-sidecar)" +%s.%6N)
echo "== token written at $written, unit active at $active_at"
check "READY came after the token was written" \
  python3 -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))" "$written" "$active_at"

# --- 4. Owner, group and mode.
echo "== $(stat -c '%A %U:%G %n' /run/forestreet "$TOKEN")"
check "token is forestreet-sidecar:forestreet 0640" \
  test "$(stat -c '%U:%G %a' "$TOKEN")" = "forestreet-sidecar:forestreet 640"
check "directory is forestreet-sidecar:forestreet 0750" \
  test "$(stat -c '%U:%G %a' /run/forestreet)" = "forestreet-sidecar:forestreet 750"
check "no temporary file left" test -z "$(find /run/forestreet -name '.token.tmp-*')"
journal=$(sandbox-journal forestreet-sidecar -o cat)
check "no write_error in the journal" bash -c '! grep -q write_error <<<"$1"' _ "$journal"
check "the key is not in the journal" bash -c '! grep -qF -- "$1" <<<"$2"' _ "$KEY" "$journal"

# --- 5. reload: exactly one immediate refresh.
before=$(session_requests)
token_before=$(cat "$TOKEN")
systemctl reload forestreet-sidecar
wait_for 5 more_requests_than "$before"
sleep 3
after=$(session_requests)
echo "== session requests around reload: $before -> $after"
check "reload makes exactly one request" test "$after" -eq $((before + 1))
check "reload wrote a new token" test "$(cat "$TOKEN")" != "$token_before"

# --- 6. restart: the token never disappears (a reader polls it every ~2 ms meanwhile).
token_before=$(cat "$TOKEN")
python3 - "$TOKEN" >/tmp/reader.out <<'EOF' &
import pathlib, sys, time
path, reads, misses = pathlib.Path(sys.argv[1]), 0, 0
stop = pathlib.Path("/tmp/reader.stop")
while not stop.exists():
    try:
        misses += not path.read_bytes()
    except OSError:
        misses += 1
    reads += 1
    time.sleep(0.002)
print(reads, misses)
EOF
reader=$!
sleep 0.5
systemctl restart forestreet-sidecar
wait_for 30 is_active
sleep 0.5
touch /tmp/reader.stop
wait "$reader"
read -r reads misses </tmp/reader.out
echo "== reads during restart: $reads, missing or empty: $misses"
check "restart: the token never disappeared" test "$reads" -gt 100 -a "$misses" -eq 0
check "restart: the valid token was kept" test "$(cat "$TOKEN")" = "$token_before"
check "restart: active again" is_active

# --- 7. The watchdog kills and restarts a stopped process.
mkdir -p /etc/systemd/system/forestreet-sidecar.service.d
printf '[Service]\nWatchdogSec=3\nTimeoutAbortSec=3\n' \
  >/etc/systemd/system/forestreet-sidecar.service.d/50-watchdog.conf
systemctl daemon-reload
systemctl restart forestreet-sidecar
wait_for 30 is_active
pid=$(prop MainPID)
restarts=$(prop NRestarts)
kill -STOP "$pid"
wait_for 40 replaced_and_active "$pid"
echo "== watchdog: pid $pid -> $(prop MainPID), NRestarts $restarts -> $(prop NRestarts)"
check "watchdog: a new process took over" test "$(prop MainPID)" != "$pid"
check "watchdog: counted as one restart" test "$(prop NRestarts)" -eq $((restarts + 1))
check "watchdog: the journal names the watchdog" \
  bash -c 'sandbox-journal forestreet-sidecar -o cat | grep -qi watchdog'
check "watchdog: token still there" test -s "$TOKEN"
rm /etc/systemd/system/forestreet-sidecar.service.d/50-watchdog.conf
systemctl daemon-reload
systemctl restart forestreet-sidecar
wait_for 30 is_active

# --- 8. The example consumer reads the token as a member of the group, not the key.
install -m 0644 systemd/example-consumer.service /etc/systemd/system/
mkdir -p /etc/systemd/system/example-consumer.service.d
cat >/etc/systemd/system/example-consumer.service.d/50-probe.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/bin/sh -c 'id; sha256sum <"$FORESTREET_TOKEN_FILE" | sed "s/^/token-sha256 /"; \
  if cat /etc/forestreet-sidecar/api-key >/dev/null 2>&1; then echo key-readable; else echo key-denied; fi; \
  if ls /run/credentials/forestreet-sidecar.service/ >/dev/null 2>&1; then echo cred-readable; else echo cred-denied; fi'
EOF
systemctl daemon-reload
systemctl start example-consumer
wait_for 20 bash -c '[ "$(systemctl show -P ActiveState example-consumer)" != activating ] && [ "$(systemctl show -P ExecMainExitTimestampMonotonic example-consumer)" != 0 ]'
consumer=$(sandbox-journal example-consumer -o cat)
printf '%s\n' "$consumer" | sed 's/^/    /'
expected=$(sha256sum <"$TOKEN" | cut -d' ' -f1)
check "consumer runs as another user in group forestreet" \
  bash -c 'grep -q "groups=.*(forestreet)" <<<"$1" && ! grep -q "uid=[0-9]*(forestreet-sidecar)" <<<"$1"' _ "$consumer"
check "consumer reads the token" grep -q "token-sha256 $expected" <<<"$consumer"
check "consumer cannot read the key file" grep -q "key-denied" <<<"$consumer"
check "consumer cannot read the sidecar's credentials" grep -q "cred-denied" <<<"$consumer"

# --- 9. stop while a request hangs (the fake holds its answer 30 s): exit 0 within 5 s, token kept.
token_before=$(cat "$TOKEN")
fake_script '[{"delay": 30}]'
hung_from=$(session_requests)
systemctl reload forestreet-sidecar
wait_for 5 more_requests_than "$hung_from" ||
  fail "stop: the reload's request reached the fake"
start=$(date +%s.%N)
systemctl stop forestreet-sidecar
took=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 2))")
echo "== stop took ${took}s: Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
check "stop: exit status 0" test "$(prop ExecMainStatus)" = 0
check "stop: result success" test "$(prop Result)" = success
check "stop: within 5 s" python3 -c "import sys; sys.exit(not $took < 5)"
check "stop: token kept" test "$(cat "$TOKEN")" = "$token_before"

# --- 10. A configuration error: exit 78 and no restart loop.
printf '[Service]\nEnvironment=FORESTREET_SIDECAR_TOKEN_MODEE=0640\n' \
  >/etc/systemd/system/forestreet-sidecar.service.d/50-typo.conf
systemctl daemon-reload
systemctl reset-failed forestreet-sidecar 2>/dev/null
systemctl start forestreet-sidecar 2>/dev/null
sleep 8 # longer than RestartSec=5: a restart loop would have begun
echo "== config error: $(prop ActiveState) ExecMainStatus=$(prop ExecMainStatus) NRestarts=$(prop NRestarts)"
sandbox-journal forestreet-sidecar -o cat -n 3 | sed 's/^/    /'
check "config error: exit status 78" test "$(prop ExecMainStatus)" = 78
check "config error: no restart" test "$(prop NRestarts)" = 0
check "config error: unit failed, not activating" test "$(prop ActiveState)" = failed
check "config error: the journal names the variable" \
  bash -c 'sandbox-journal forestreet-sidecar -o cat | grep -q FORESTREET_SIDECAR_TOKEN_MODEE'
check "config error: no traceback in the journal" \
  bash -c '! sandbox-journal forestreet-sidecar -o cat | grep -q Traceback'
rm /etc/systemd/system/forestreet-sidecar.service.d/50-typo.conf
systemctl daemon-reload

echo
if [ "$failures" -eq 0 ]; then
  echo "RESULT: PASS"
  exit 0
fi
echo "RESULT: FAIL ($failures failed)"
exit 1
