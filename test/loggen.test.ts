/**
 * Tests for the benchmark log generator (test/loggen.ts), and sipcheck's counts on its output.
 *
 * 1. The generator is deterministic and writes exactly the lines it promises.
 * 2. An independent reading of the reference rules (shared/asterisk-log-formats.md), checked
 *    first against the shared corpus, agrees with the generator on every generated line: the
 *    address it counts (normalised) and how much it adds.
 * 3. sipcheck.ts, run as a subprocess under the current runtime, reports exactly the expected
 *    counts (skipped with a reason while sipcheck.ts does not exist).
 *
 * Runs under `deno test -A test/loggen.test.ts` and `node --test test/loggen.test.ts`.
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { generateLog, normalizeAddress, writeLogFile } from "./loggen.ts";
import type { LogOptions } from "./loggen.ts";

const here = dirname(fileURLToPath(import.meta.url));
const SIPCHECK = join(here, "..", "sipcheck.ts");
/** The shared corpus: the repository's copy, else shared/ beside the repository. */
const CORPUS = [
  join(here, "..", "fixtures", "corpus", "asterisk-lines.txt"),
  join(here, "..", "..", "shared", "corpus", "asterisk-lines.txt"),
].find((p) => existsSync(p)) ?? "";

// ---------------------------------------------------------------------------------------------
// An independent reference reading of the rules, limited to the shapes the generator writes.

/** Normalises a bare address with WHATWG URL (RFC 5952 output); IPv4-mapped to IPv4. */
function refNormalize(text: string): string | null {
  if (isIPv4(text)) return text;
  if (!isIPv6(text)) return null;
  const host = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (mapped) {
    const hi = parseInt(mapped[1], 16), lo = parseInt(mapped[2], 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return host;
}

/** An address that always carries a port: `v4:port`, `[v6]:port`, or unbracketed `v6:port`. */
function withPort(text: string): string | null {
  const br = /^\[([^\]]+)\]:\d+$/.exec(text);
  if (br) return refNormalize(br[1]);
  const m = /^(.+):\d+$/.exec(text);
  return m ? refNormalize(m[1]) : null;
}

/** An address with or without port: `v4`, `v4:port`, `[v6]:port` or bare `v6`. */
function maybePort(text: string): string | null {
  const br = /^\[([^\]]+)\]:\d+$/.exec(text);
  if (br) return refNormalize(br[1]);
  const v4 = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(text);
  if (v4) return refNormalize(v4[1]);
  return refNormalize(text);
}

const LEVEL_TID = String.raw`([A-Z]+)\[\d+\](?:\[C-[0-9a-f]{8}\])?`;
const FILE = String.raw`([\w./-]+\.c|Ext\. \S*)`;
const FUNC = String.raw`(?:\w+|@ [^:]+)`;
const SYSHDR = String.raw`(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|` +
  String.raw`\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)) \S+ asterisk\[\d+\]:`;
const PREFIXES = [
  new RegExp(String.raw`^\[[^\]\n]*\] ${LEVEL_TID} ${FILE}: (.*)$`),
  new RegExp(String.raw`^\[[^\]\n]*\] ${LEVEL_TID}: ${FILE}:\d+ ${FUNC}: (.*)$`),
  new RegExp(String.raw`^${SYSHDR} ${LEVEL_TID}: ${FILE}:\d+ in ${FUNC}: (.*)$`),
];
const REG_REASONS = [
  "Wrong password",
  "Username/auth name mismatch",
  "No matching peer found",
  "Not a local domain",
  "Peer is not supposed to register",
  "Device does not match ACL",
  "Device not configured to use this transport type",
  "RTP initialization failed",
  "Unknown failure",
  "Not a local SIP domain",
  "ACL error (permit/deny)",
  "Unknown error",
].map((r) => r.replace(/[()/]/g, "\\$&")).join("|");
const SIP_REGISTER = new RegExp(
  `^Registration from '.*' failed for '([^']*)' - (?:${REG_REASONS})$`,
);
const SIP_CALL = /^Call from '[^']*' \(([^()\s]+)\) to extension '/;
const PJSIP_HEAD = /^Request (?:'[^ ]+' )?from '/;
const PJSIP_FROM = [/^<[^ "<>]*>/, /^"(?:[^"\\]|\\.)*" <[^ "<>]*>/, /^"[^:<]*" <[^ "<>]*>/];
const PJSIP_ADDR = /^' failed for '([^']*)' \(callid: /;
const PJSIP_TRIES = / after (\d+) tries in \d+\.\d{3} ms$/;
const PJSIP_CALL = [
  /^Call from '[^']*' \([A-Z0-9-]+:([^()\s]+?)\) to extension '/,
  /^ ?[^ ]+: Call \([A-Z0-9-]+:([^()\s]+?)\) to extension '/,
];
const IAX_HOST = new RegExp(
  "^Host (\\S+) (?:failed to authenticate as |failed MD5 authentication for '|" +
    "did not provide proper plaintext password for '|denied access to register peer ')",
);
const IAX_NOREG = /^No registration for peer '.*' \(from ([0-9A-Fa-f.:]+)\)$/;
const IAX_REJECTED = /^Rejected connect attempt from (\S+), who was trying to reach '/;
const AMI = new RegExp(
  "^(\\S+) (?:failed to authenticate as|tried to authenticate with nonexistent user|" +
    "failed to pass IP ACL as) '",
);
const SECURITY =
  /^SecurityEvent="(FailedACL|InvalidAccountID|ChallengeResponseFailed|InvalidPassword)",/;
const SEC_REMOTE =
  /",LocalAddress="[^"]*",RemoteAddress="IPV[46]\/(?:[A-Z]{2,4}\/)?([0-9A-Fa-f.:]+)\/\d+"/g;
const DIALPLAN = /^"?Rejecting unknown SIP connection from ([0-9A-Fa-f.:]+)"?$/;

/** What one physical line counts under the reference rules. */
interface RefHit {
  address: string;
  /** N of a PJSIP ` after N tries` line, else undefined (the line counts 1). */
  tries?: number;
}

/** Reads one physical line the way the reference describes; null when nothing is counted. */
function refCount(line: string): RefHit | null {
  let m: RegExpExecArray | null = null;
  for (const p of PREFIXES) if ((m = p.exec(line))) break;
  if (!m) return null;
  const [, level, file, body] = m;
  const hit = (address: string | null, tries?: number): RefHit | null =>
    address === null ? null : { address, tries };
  switch (file) {
    case "chan_sip.c":
      if ((m = SIP_REGISTER.exec(body))) return hit(maybePort(m[1]));
      if ((m = SIP_CALL.exec(body))) return hit(withPort(m[1]));
      return null;
    case "res_pjsip/pjsip_distributor.c": {
      const head = PJSIP_HEAD.exec(body);
      if (!head) return null;
      const rest = body.slice(head[0].length);
      for (const from of PJSIP_FROM) {
        const f = from.exec(rest);
        const a = f && PJSIP_ADDR.exec(rest.slice(f[0].length));
        if (!a) continue;
        const tries = PJSIP_TRIES.exec(body);
        return hit(withPort(a[1]), tries ? Number(tries[1]) : undefined);
      }
      return null;
    }
    case "res_pjsip_session.c":
      for (const p of PJSIP_CALL) if ((m = p.exec(body))) return hit(withPort(m[1]));
      return null;
    case "chan_iax2.c":
      if ((m = IAX_HOST.exec(body))) return hit(maybePort(m[1]));
      if ((m = IAX_NOREG.exec(body))) return hit(refNormalize(m[1]));
      if ((m = IAX_REJECTED.exec(body))) return hit(maybePort(m[1]));
      return null;
    case "manager.c":
      m = AMI.exec(body);
      return m ? hit(refNormalize(m[1])) : null;
    case "res_security_log.c": {
      if (level !== "SECURITY" || !(m = SECURITY.exec(body))) return null;
      if (m[1] === "FailedACL" && /,ACLName="registrar_/.test(body)) return null;
      const found = new Set([...body.matchAll(SEC_REMOTE)].map((x) => refNormalize(x[1])));
      return found.size === 1 ? hit([...found][0]) : null;
    }
    default:
      if (file.startsWith("Ext. ") && (m = DIALPLAN.exec(body))) return hit(refNormalize(m[1]));
      return null;
  }
}

/** Applies sipcheck's counting rule to a sequence of reference hits. */
function refTally(): { add(hit: RefHit): number; counts: Map<string, number> } {
  const counts = new Map<string, number>();
  const last = new Map<string, number>();
  return {
    counts,
    add(hit) {
      let add = 1;
      if (hit.tries !== undefined) {
        const prev = last.get(hit.address) ?? 0;
        add = hit.tries > prev ? Math.min(hit.tries - prev, 5) : Math.min(hit.tries, 5);
        last.set(hit.address, hit.tries);
      }
      counts.set(hit.address, (counts.get(hit.address) ?? 0) + add);
      return add;
    },
  };
}

/** Corpus families the reference reading above covers (injection and JSON cases excluded). */
const COVERED = /^(sip-|pjsip-|iax2-|ami-|security-|dialplan-|continuation-)/;
const NOT_COVERED = /inject|json|journal|hacking|open-head|ambiguous|esc-residue/;

// ---------------------------------------------------------------------------------------------

test("the reference reading agrees with the shared corpus", {
  skip: CORPUS ? false : "corpus not found",
}, () => {
  const lines = readFileSync(CORPUS, "utf8").split("\n");
  let checked = 0;
  for (let i = 0; i < lines.length; i++) {
    const m = /^# EXPECT (\S+) (\S+)$/.exec(lines[i]);
    if (!m || !COVERED.test(m[2]) || NOT_COVERED.test(m[2])) continue;
    const got = refCount(lines[i + 1]);
    assert.equal(got?.address ?? "none", m[1], `corpus ${m[2]}: ${lines[i + 1]}`);
    checked++;
  }
  assert.ok(checked > 40, `only ${checked} corpus cases checked`);
});

test("normalizeAddress agrees with WHATWG URL on generated shapes", () => {
  const cases = [
    "2001:DB8:0:0:0:0:0:4F",
    "2001:0db8:0001:0000:0000:0000:0000:0025",
    "2001:db8:0:0:1:0:0:1",
    "2001:db8:4:0:0:1:0:28",
    "::ffff:203.0.113.5",
    "203.0.113.5",
    "2001:db8:1:0:b70b:0:0:2",
  ];
  for (const c of cases) assert.equal(normalizeAddress(c), refNormalize(c), c);
});

test("the generator is deterministic and writes exactly the lines asked for", () => {
  const render = (opts: LogOptions) => {
    let text = "";
    const log = generateLog(opts);
    const stats = log.write((chunk) => (text += chunk));
    return { text, stats, expected: [...log.expected] };
  };
  const a = render({ lines: 5000, seed: 7 });
  const b = render({ lines: 5000, seed: 7 });
  const c = render({ lines: 5000, seed: 8 });
  assert.equal(a.text, b.text);
  assert.deepEqual(a.expected, b.expected);
  assert.notEqual(a.text, c.text);
  assert.equal(a.text.split("\n").length - 1, 5000);
  assert.equal(a.stats.lines, 5000);
  assert.ok(a.text.split("\n").every((l) => l.length < 8000));
});

for (
  const [name, opts] of [
    ["heavy-tailed", { lines: 60000, seed: 3 }],
    ["distinct", { lines: 20000, seed: 4, distinctAttackers: 3000, v6Share: 0.5 }],
  ] as [string, LogOptions][]
) {
  test(`every ${name} generated line agrees with the reference reading`, () => {
    const ref = refTally();
    let counted = 0;
    const log = generateLog({
      ...opts,
      onRecord(text, address, add) {
        const [first, ...continuation] = text.split("\n");
        const got = refCount(first);
        if (address === null) {
          assert.equal(got, null, `benign line counted: ${first}`);
        } else {
          assert.ok(got, `counted line not recognised: ${first}`);
          assert.equal(got.address, address, first);
          assert.equal(ref.add(got), add, first);
          counted++;
        }
        for (const c of continuation) assert.equal(refCount(c), null, c);
      },
    });
    const stats = log.write(() => {});
    assert.equal(stats.countedLines, counted);
    assert.deepEqual(new Map([...log.expected].sort()), new Map([...ref.counts].sort()));
    if (opts.distinctAttackers) assert.equal(log.expected.size, opts.distinctAttackers);
    assert.equal(stats.failures, [...log.expected.values()].reduce((x, y) => x + y, 0));
  });
}

// ---------------------------------------------------------------------------------------------
// sipcheck itself, as a subprocess of the current runtime.

/** The command that runs a TypeScript file under the current runtime, or a reason to skip. */
function runtimeCommand(): { cmd: string; args: string[] } | string {
  if (typeof Deno !== "undefined") {
    return { cmd: Deno.execPath(), args: ["run", "--allow-read", "--allow-sys"] };
  }
  const [major, minor] = process.versions.node.split(".").map(Number);
  if (major > 22 || (major === 22 && minor >= 18)) return { cmd: process.execPath, args: [] };
  return `Node ${process.versions.node} cannot run TypeScript; needs >= 22.18`;
}

const runner = runtimeCommand();
const skipCli = !existsSync(SIPCHECK)
  ? `sipcheck.ts not found at ${SIPCHECK}`
  : typeof runner === "string"
  ? runner
  : false;
if (skipCli) process.stderr.write(`loggen.test.ts: skipping sipcheck checks: ${skipCli}\n`);

for (
  const [name, opts] of [
    ["20,000-line log", { lines: 20000, seed: 11 }],
    ["distinct-addresses log", { lines: 15000, seed: 12, distinctAttackers: 3000 }],
  ] as [string, LogOptions][]
) {
  test(`sipcheck counts the ${name} exactly`, { skip: skipCli }, () => {
    const { cmd, args } = runner as { cmd: string; args: string[] };
    const dir = mkdtempSync(join(tmpdir(), "sipcheck-loggen-"));
    try {
      const file = join(dir, "messages");
      const log = writeLogFile(file, opts);
      const res = spawnSync(cmd, [...args, SIPCHECK, "--dry-run", "--json", file], {
        encoding: "utf8",
        maxBuffer: 1 << 28,
      });
      assert.equal(res.status, 0, `sipcheck exited ${res.status}: ${res.stderr}`);
      const report = JSON.parse(res.stdout) as {
        lines: number;
        failures: number;
        addresses: { ip: string; failures: number }[];
      };
      const got = new Map(report.addresses.map((a) => [a.ip, a.failures]));
      const want = log.expected;
      const wrong: string[] = [];
      for (const [ip, n] of want) {
        if (got.get(ip) !== n) wrong.push(`${ip}: ${got.get(ip)} != ${n}`);
      }
      for (const [ip, n] of got) if (!want.has(ip)) wrong.push(`${ip}: ${n}, expected none`);
      assert.deepEqual(wrong.slice(0, 20), [], `${wrong.length} addresses differ`);
      assert.equal(report.lines, log.lines, "physical lines");
      assert.equal(report.failures, log.failures, "total failures");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
