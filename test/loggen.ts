/**
 * Deterministic Asterisk log generator for sipcheck's benchmark and tests.
 *
 * It writes a realistic Asterisk `messages` log (mostly the default file format with
 * `dateformat=%F %T.%3q`, a few percent in the classic-date, `[plain]` and syslog prefix forms)
 * that mixes many kinds of benign traffic with every failure family sipcheck counts, and it
 * returns the exact number of failures sipcheck must count per normalised source address.
 *
 * Counting rule mirrored here: every counted line adds 1 to its address, except PJSIP distributor
 * lines ending in ` after N tries in X ms`. For those, per address, `last` is the N of the previous
 * such line (initially 0); a line adds `min(N - last, 5)` when N > last, else `min(N, 5)`, and then
 * sets last = N.
 *
 * Everything is driven by a seeded PRNG (sfc32), so the same options give the same bytes on Deno
 * and on Node. Output is streamed in chunks of about 1 MiB, so memory stays bounded however many
 * lines are written (apart from per-attacker counters).
 *
 * Also usable as a command: `deno run -A test/loggen.ts [--lines N] [--distinct N] [--seed N] OUT`
 * writes OUT and OUT.expected.json.
 *
 * @module
 */

import { closeSync, openSync, writeFileSync, writeSync } from "node:fs";
import { Buffer } from "node:buffer";
import process from "node:process";

// ---------------------------------------------------------------------------------------------
// Public types

/** Options for {@link generateLog}. */
export interface LogOptions {
  /** Exact number of physical lines to write (continuation lines included). */
  lines: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /**
   * Heavy-tailed mode (the default): number of attacking addresses, picked Zipf-like
   * (s = 1.1), so a few addresses fail tens of thousands of times and many only a handful.
   * Default: `min(20000, max(50, lines / 500))`.
   */
  attackers?: number;
  /**
   * Distinct mode: exactly this many attacking addresses, each writing between
   * `linesPerAttacker[0]` and `linesPerAttacker[1]` counted lines. `lines` must leave room for
   * them (see {@link distinctLinesNeeded}).
   */
  distinctAttackers?: number;
  /** Distinct mode: counted lines per attacker, inclusive range (default [1, 5]). */
  linesPerAttacker?: [number, number];
  /** Heavy-tailed mode: fraction of lines that are counted failures (default 0.25). */
  attackShare?: number;
  /** Fraction of attacking addresses that are IPv6 (default 0.25). */
  v6Share?: number;
  /** Fraction of lines in each non-default prefix form (defaults 0.02, 0.02, 0.02). */
  formats?: { classic?: number; plain?: number; syslog?: number };
  /** Families of counted lines to use (names from {@link FAMILY_NAMES}); default all. */
  families?: string[];
  /** Debug hook: called for every record with the normalised address it counts and the amount. */
  onRecord?: (text: string, address: string | null, add: number) => void;
}

/** What a finished {@link GeneratedLog.write} produced. */
export interface LogStats {
  /** Physical lines written (every line ends in LF). */
  lines: number;
  /** Bytes written. */
  bytes: number;
  /** Sum of all expected failures. */
  failures: number;
  /** Counted lines written. */
  countedLines: number;
}

/** A prepared log: stream it once with `write`, then read `expected`. */
export interface GeneratedLog {
  /** Streams the whole log to `sink` in chunks of about 1 MiB. Can be called once. */
  write(sink: (chunk: string) => void): LogStats;
  /** Expected failures per normalised address; complete once `write` has returned. */
  readonly expected: Map<string, number>;
}

/** Result of the file helpers. */
export interface WrittenLog extends LogStats {
  path: string;
  expected: Map<string, number>;
}

// ---------------------------------------------------------------------------------------------
// PRNG

/** A small seeded random source (sfc32). */
export interface Rng {
  /** Uniform 32-bit unsigned integer. */
  u32(): number;
  /** Uniform float in [0, 1). */
  float(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** True with probability p. */
  chance(p: number): boolean;
  /** A uniformly chosen element. */
  pick<T>(items: readonly T[]): T;
}

/** Creates a deterministic PRNG (sfc32 seeded through splitmix32). */
export function makeRng(seed: number): Rng {
  let s = seed >>> 0;
  const split = (): number => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  const u32 = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 16; i++) u32();
  const float = (): number => u32() / 4294967296;
  return {
    u32,
    float,
    int: (n) => Math.floor(float() * n),
    chance: (p) => float() < p,
    pick: (items) => items[Math.floor(float() * items.length)],
  };
}

// ---------------------------------------------------------------------------------------------
// Addresses

/** Formats eight 16-bit groups as RFC 5952 text (lower case, longest zero run compressed). */
export function formatV6(groups: readonly number[]): string {
  let bestAt = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (from: number, to: number) =>
    groups.slice(from, to).map((g) => g.toString(16)).join(":");
  if (bestAt < 0) return hex(0, 8);
  return `${hex(0, bestAt)}::${hex(bestAt + bestLen, 8)}`;
}

/** Parses IPv6 text (optionally with an embedded dotted quad) into 8 groups, or null. */
export function parseV6(text: string): number[] | null {
  let s = text;
  let tail: number[] = [];
  const dot = s.lastIndexOf(".");
  if (dot >= 0) {
    const colon = s.lastIndexOf(":");
    const v4 = parseV4(s.slice(colon + 1));
    if (v4 === null) return null;
    tail = [(v4 >>> 16) & 0xffff, v4 & 0xffff];
    s = s.slice(0, colon + 1) + "0:0";
  }
  const parts = s.split("::");
  if (parts.length > 2) return null;
  const side = (p: string): number[] | null => {
    if (p === "") return [];
    const out: number[] = [];
    for (const g of p.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = side(parts[0]);
  const rest = parts.length === 2 ? side(parts[1]) : [];
  if (head === null || rest === null) return null;
  let groups: number[];
  if (parts.length === 2) {
    const fill = 8 - head.length - rest.length;
    if (fill < 1) return null;
    groups = [...head, ...new Array(fill).fill(0), ...rest];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return null;
  if (tail.length) groups.splice(6, 2, ...tail);
  return groups;
}

/** Parses dotted-quad IPv4 into an unsigned 32-bit number, or null. */
export function parseV4(text: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const o = Number(m[i]);
    if (o > 255 || (m[i].length > 1 && m[i][0] === "0")) return null;
    n = n * 256 + o;
  }
  return n;
}

const v4Text = (n: number): string =>
  `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;

/**
 * Normalises a bare address (no port, no brackets): IPv4 dotted, IPv6 RFC 5952, and
 * `::ffff:a.b.c.d` to `a.b.c.d`. Returns null when the text is not an address.
 */
export function normalizeAddress(text: string): string | null {
  const v4 = parseV4(text);
  if (v4 !== null) return v4Text(v4);
  const g = parseV6(text);
  if (g === null) return null;
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) {
    return v4Text(((g[6] << 16) | g[7]) >>> 0);
  }
  return formatV6(g);
}

/** First address of each IPv4 range attackers are drawn from, with its size, in use order. */
const V4_RANGES: readonly [number, number][] = [
  [0xc6336400, 256], // 198.51.100.0/24 (TEST-NET-2)
  [0xcb007100, 256], // 203.0.113.0/24 (TEST-NET-3)
  [0xc6120000, 131072], // 198.18.0.0/15 (benchmarking)
  [0x64400000, 4194304], // 100.64.0.0/10 (shared address space)
];

/** Builds the attacker population: display text (canonical) and v6 flags, deterministically. */
function makeAttackers(count: number, v6Share: number, rng: Rng) {
  const text: string[] = new Array(count);
  const v6 = new Uint8Array(count);
  // The two TEST-NETs come first (shuffled, .0 and .255 skipped); then the big ranges in order.
  const testNets: number[] = [];
  for (const [base] of V4_RANGES.slice(0, 2)) {
    for (let i = 1; i < 255; i++) testNets.push(base + i);
  }
  for (let i = testNets.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [testNets[i], testNets[j]] = [testNets[j], testNets[i]];
  }
  let v4Next = 0, v6Next = 0;
  const nextV4 = (): number => {
    const k = v4Next++;
    if (k < testNets.length) return testNets[k];
    let off = k - testNets.length;
    for (const [base, size] of V4_RANGES.slice(2)) {
      if (off < size) return base + off;
      off -= size;
    }
    throw new Error("too many IPv4 attackers");
  };
  const nextV6 = (): number[] => {
    // Groups 6 and 7 encode the index (never both zero), group 2 the shape: always distinct.
    const k = v6Next++;
    const g6 = k >>> 15, g7 = (k & 0x7fff) + 1;
    const r = () => rng.int(3) === 0 ? 0 : rng.int(0x10000);
    switch (k % 5) {
      case 0:
        return [0x2001, 0xdb8, 0, 0, 0, 0, g6, g7]; // 2001:db8::4f
      case 1:
        return [0x2001, 0xdb8, 1, r(), r(), r(), g6, g7]; // mixed, maybe no "::"
      case 2:
        return [0x2001, 0xdb8, 2, rng.int(0x10000), 0, 0, g6, g7]; // 2001:db8:2:x::y:z
      case 3:
        return [0x2001, 0xdb8, 3, 0, 0, 0, g6, g7]; // 2001:db8:3::z
      default:
        return [0x2001, 0xdb8, 4, 0, 0, g6 + 1, 0, g7]; // single zero group stays
    }
  };
  for (let i = 0; i < count; i++) {
    const isV6 = Math.floor((i + 1) * v6Share) > Math.floor(i * v6Share);
    v6[i] = isV6 ? 1 : 0;
    text[i] = isV6 ? formatV6(nextV6()) : v4Text(nextV4());
  }
  return { text, v6 };
}

// ---------------------------------------------------------------------------------------------
// Counted families

/** Names of the counted-line families the generator can produce. */
export const FAMILY_NAMES = [
  "sip-register",
  "sip-call",
  "pjsip-request",
  "pjsip-request-p2",
  "pjsip-request-p1",
  "pjsip-tries",
  "pjsip-call-s1",
  "pjsip-call-s2",
  "pjsip-call-s3",
  "iax2-auth",
  "iax2-md5",
  "iax2-plaintext",
  "iax2-acl",
  "iax2-noreg",
  "iax2-rejected",
  "ami-auth",
  "ami-nouser",
  "ami-acl",
  "security-invalid-account",
  "security-challenge-failed",
  "security-invalid-password",
  "security-failed-acl",
  "dialplan-unknown-sip",
] as const;

/** Relative frequency of each family for attackers not using their main family. */
const FAMILY_WEIGHTS: Record<string, number> = {
  "sip-register": 20,
  "sip-call": 8,
  "pjsip-request": 20,
  "pjsip-request-p2": 3,
  "pjsip-request-p1": 2,
  "pjsip-tries": 6,
  "pjsip-call-s1": 2,
  "pjsip-call-s2": 2,
  "pjsip-call-s3": 4,
  "iax2-auth": 3,
  "iax2-md5": 1,
  "iax2-plaintext": 1,
  "iax2-acl": 1,
  "iax2-noreg": 2,
  "iax2-rejected": 2,
  "ami-auth": 3,
  "ami-nouser": 2,
  "ami-acl": 1,
  "security-invalid-account": 8,
  "security-challenge-failed": 6,
  "security-invalid-password": 3,
  "security-failed-acl": 4,
  "dialplan-unknown-sip": 3,
};

const REG_REASONS = [
  "Username/auth name mismatch",
  "No matching peer found",
  "Not a local domain",
  "Peer is not supposed to register",
  "Device does not match ACL",
  "Device not configured to use this transport type",
  "RTP initialization failed",
  "Unknown failure",
];
/** Asterisk 1.2 spellings (IPv4 without port in that era). */
const REG_REASONS_12 = ["Not a local SIP domain", "ACL error (permit/deny)", "Unknown error"];
const PJSIP_REASONS = [
  "Not match Endpoint ACL",
  "Not match Endpoint Contact ACL",
  "Failed to authenticate",
  "Error to authenticate",
];
const METHODS = ["REGISTER", "REGISTER", "REGISTER", "INVITE", "INVITE", "OPTIONS", "SUBSCRIBE"];
const USERS = ["100", "101", "1000", "1001", "1002", "2000", "admin", "test", "sip", "6001", "999"];
const EXTENS = [
  "00972599999999",
  "9011441234567",
  "0044123456789",
  "011972592733420",
  "100",
  "s",
  "+442071234567",
  "900441234567",
  "0123",
];
const CONTEXTS = ["default", "public", "from-sip-external", "unauthenticated"];
const TRANSPORTS = ["UDP", "UDP", "UDP", "TCP", "TLS", "WS", "WSS"];
const AMI_USERS = ["admin", "root", "manager", "asterisk", "monitor", "test"];
const IAX_PEERS = ["trunk1", "guest", "provider", "office", "1001"];
const HEX = "0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// The generator

/** Number of lines a distinct-mode log needs at least (every attacker at its maximum). */
export function distinctLinesNeeded(distinct: number, perAttacker: [number, number] = [1, 5]) {
  return distinct * perAttacker[1];
}

/**
 * Prepares a deterministic log. Nothing is generated until `write` is called; the expected
 * counts are filled in while writing.
 */
export function generateLog(opts: LogOptions): GeneratedLog {
  const expected = new Map<string, number>();
  let used = false;
  return {
    expected,
    write(sink) {
      if (used) throw new Error("generateLog: write() can be called once");
      used = true;
      return run(opts, sink, expected);
    },
  };
}

/** Streams a log to `path` (created or truncated) with `writeSync`, in chunks of about 1 MiB. */
export function writeLogFile(path: string, opts: LogOptions): WrittenLog {
  const fd = openSync(path, "w");
  try {
    const log = generateLog(opts);
    const stats = log.write((chunk) => writeAll(fd, chunk));
    return { path, expected: log.expected, ...stats };
  } finally {
    closeSync(fd);
  }
}

/**
 * Lines an attacker can make Asterisk write that are costly to read, none of which counts
 * (shared/asterisk-log-formats.md §4.1 says which fields carry what, §4.3 how a line feed in a
 * field starts a line whose content the attacker chooses). `i` varies the lengths.
 */
export const HOSTILE_SHAPES: Record<string, (i: number) => string> = {
  /** Forged lines (a line feed in a chan_sip call's extension) that open a date and never close
   * it: a reader that looks for the `]` from each of them searches on through the ones after. */
  "unclosed bracket": (i) => "[" + "x".repeat(40 + (i % 20)),
  /** Forged lines with a level but no `file.c: `, which the file name is searched for. */
  "prefix without file": (i) => "[x] NOTICE[1] " + "y".repeat(40 + (i % 20)),
  /** chan_sip REGISTER security events cut by a line feed in the AccountID (about 250 bytes):
   * no SessionID or RemoteAddress follows, and each line opens a window. */
  "security event cut short": (i) =>
    `[2026-11-25 00:00:00.292] SECURITY[2628] res_security_log.c: ` +
    `SecurityEvent="InvalidPassword",EventTV="2026-11-25T00:00:00.292+0000",Severity="Error",` +
    `Service="SIP",EventVersion="2",AccountID="${"a".repeat(150 + (i % 100))}`,
  /** PJSIP requests whose quoted From display (255 bytes at most) is all escapes and quotes. */
  "PJSIP display of quotes": (i) =>
    `[2026-11-25 00:00:00.026] NOTICE[1305] res_pjsip/pjsip_distributor.c: Request 'REGISTER' ` +
    `from '"${`\\"'`.repeat(60 + (i % 20))}" <sip:x@y>' failed for '${"'".repeat(40)}`,
  /** chan_sip registrations whose To header (a whole packet) is hundreds of `'`. */
  "registration of quotes": (i) =>
    `[2026-11-25 00:00:00.168] NOTICE[1336] chan_sip.c: Registration from ` +
    `'${"'".repeat(200 + (i % 50))}' failed for '198.51.100.7:5060' - Wrong password x`,
  /** Forged syslog lines that pass the located prefix up to the file, which is not watched. */
  "syslog near miss": (i) =>
    `Nov 25 00:00:00 pbx asterisk[123]: NOTICE[1]: chan_sipx.c:${i} handle_request: ` +
    "z".repeat(50),
  /** Registrations just under the longest line read (8000 bytes), `' ` over and over. */
  "longest lines of quotes": (i) =>
    `[2026-11-25 00:00:00.168] NOTICE[1336] chan_sip.c: Registration from '` +
    "' ".repeat(3900 + (i % 10)),
};

/** The text of about `bytes` bytes of lines of `shape` (see {@link HOSTILE_SHAPES}). */
export function hostileText(shape: string, bytes: number): { text: string; lines: number } {
  const make = HOSTILE_SHAPES[shape];
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const line = make(i) + "\n";
    lines.push(line);
    size += line.length;
  }
  return { text: lines.join(""), lines: lines.length };
}

/** Writes about `bytes` bytes of lines of `shape`; none of them counts. */
export function writeHostileFile(path: string, shape: string, bytes: number): WrittenLog {
  const fd = openSync(path, "w");
  try {
    let lines = 0, written = 0;
    for (let left = bytes; left > 0;) {
      const piece = hostileText(shape, Math.min(left, 1 << 20));
      writeAll(fd, piece.text);
      lines += piece.lines;
      written += piece.text.length;
      left -= piece.text.length;
    }
    return { path, expected: new Map(), lines, bytes: written, failures: 0, countedLines: 0 };
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a file that starts with one line of `longBytes` bytes (no LF inside it; it carries no
 * prefix and no address), then 16 KiB of benign lines, then a normal generated log of
 * `opts.lines` lines. The expected counts are those of the normal part.
 */
export function writeLongLineFile(
  path: string,
  opts: LogOptions & { longBytes?: number },
): WrittenLog {
  const longBytes = opts.longBytes ?? 100 * 1024 * 1024;
  const fd = openSync(path, "w");
  try {
    const unit = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";
    const block = unit.repeat(Math.ceil((1 << 20) / unit.length)).slice(0, 1 << 20);
    let left = longBytes;
    while (left > 0) {
      const part = left >= block.length ? block : block.slice(0, left);
      writeAll(fd, part);
      left -= part.length;
    }
    let pad = "\n";
    let padLines = 1;
    for (let i = 0; pad.length < 16384; i++) {
      pad += `[2026-11-24 23:59:59.${String(i % 1000).padStart(3, "0")}] VERBOSE[1000] ` +
        `asterisk.c: Long line above is not a record; padding line ${i}\n`;
      padLines++;
    }
    writeAll(fd, pad);
    const log = generateLog(opts);
    const stats = log.write((chunk) => writeAll(fd, chunk));
    return {
      path,
      expected: log.expected,
      ...stats,
      lines: stats.lines + padLines,
      bytes: stats.bytes + longBytes + pad.length,
    };
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, chunk: string): void {
  const buf = Buffer.from(chunk, "utf8");
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/** Walker's alias table for O(1) weighted picks. */
function aliasTable(weights: Float64Array) {
  const n = weights.length;
  let total = 0;
  for (const w of weights) total += w;
  const prob = new Float64Array(n), alias = new Int32Array(n);
  const scaled = weights.map((w) => (w * n) / total);
  const small: number[] = [], large: number[] = [];
  scaled.forEach((p, i) => (p < 1 ? small : large).push(i));
  while (small.length && large.length) {
    const s = small.pop()!, l = large.pop()!;
    prob[s] = scaled[s];
    alias[s] = l;
    scaled[l] = scaled[l] + scaled[s] - 1;
    (scaled[l] < 1 ? small : large).push(l);
  }
  for (const i of large) prob[i] = 1;
  for (const i of small) prob[i] = 1;
  return (rng: Rng): number => {
    const i = rng.int(n);
    return rng.float() < prob[i] ? i : alias[i];
  };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const MS3 = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, "0"));

interface Source {
  level: string;
  file: string;
  line: number;
  func: string;
}

function run(opts: LogOptions, sink: (chunk: string) => void, expected: Map<string, number>) {
  const rng = makeRng(opts.seed ?? 1);
  const totalLines = Math.floor(opts.lines);
  const distinct = opts.distinctAttackers ?? 0;
  const perAttacker = opts.linesPerAttacker ?? [1, 5];
  const nAttackers = distinct > 0
    ? distinct
    : Math.max(1, Math.floor(opts.attackers ?? Math.min(20000, Math.max(50, totalLines / 500))));
  const { text: attackerText, v6: isV6 } = makeAttackers(nAttackers, opts.v6Share ?? 0.25, rng);
  const counts = new Float64Array(nAttackers);
  const lastTries = new Int32Array(nAttackers); // sipcheck's `last` per address
  const runAt = new Int32Array(nAttackers); // generator's current window position (0 = none)
  const runTime = new Float64Array(nAttackers);

  // Families: each attacker has a main family and uses it 70 % of the time.
  const familyNames = (opts.families ?? [...FAMILY_NAMES]).filter((f) => f in FAMILY_WEIGHTS);
  if (familyNames.length === 0) throw new Error("no known family selected");
  const pickFamily = aliasTable(Float64Array.from(familyNames, (f) => FAMILY_WEIGHTS[f]));
  const mainFamily = new Uint8Array(nAttackers);
  for (let i = 0; i < nAttackers; i++) mainFamily[i] = pickFamily(rng);

  // Attack lines: how many, and who writes each.
  let attackLeft: number;
  let nextAttacker: () => number;
  if (distinct > 0) {
    const left = new Uint8Array(nAttackers);
    attackLeft = 0;
    for (let i = 0; i < nAttackers; i++) {
      left[i] = perAttacker[0] + rng.int(perAttacker[1] - perAttacker[0] + 1);
      attackLeft += left[i];
    }
    if (attackLeft > totalLines) {
      throw new Error(`distinct mode needs at least ${attackLeft} lines, got ${totalLines}`);
    }
    // A pool of 256 active attackers interleaves their lines; an exhausted one is replaced.
    const pool: number[] = [];
    let next = 0;
    while (pool.length < 256 && next < nAttackers) pool.push(next++);
    nextAttacker = () => {
      const slot = rng.int(pool.length);
      const a = pool[slot];
      if (--left[a] === 0) {
        if (next < nAttackers) pool[slot] = next++;
        else {
          pool[slot] = pool[pool.length - 1];
          pool.pop();
        }
      }
      return a;
    };
  } else {
    attackLeft = Math.round(totalLines * (opts.attackShare ?? 0.25));
    const w = new Float64Array(nAttackers);
    for (let i = 0; i < nAttackers; i++) w[i] = 1 / Math.pow(i + 1, 1.1);
    nextAttacker = aliasTable(w).bind(null, rng);
  }

  // Prefix forms.
  const fm = opts.formats ?? {};
  const pClassic = fm.classic ?? 0.02, pPlain = fm.plain ?? 0.02, pSyslog = fm.syslog ?? 0.02;

  // Clock: starts 2026-11-25 00:00:00 UTC, advances 0-59 ms per record.
  let now = Date.UTC(2026, 10, 25, 0, 0, 0);
  let cachedSec = -1, isoSec = "", classicSec = "";
  const tick = () => {
    now += rng.int(60);
    const sec = Math.floor(now / 1000);
    if (sec !== cachedSec) {
      cachedSec = sec;
      const d = new Date(sec * 1000);
      const iso = d.toISOString();
      const hms = iso.slice(11, 19);
      isoSec = `${iso.slice(0, 10)} ${hms}`;
      const day = String(d.getUTCDate()).padStart(2, " ");
      classicSec = `${MONTHS[d.getUTCMonth()]} ${day} ${hms}`;
    }
  };

  let callSeq = 0x1d;
  const callTag = () => `[C-${(callSeq += 1 + rng.int(3)).toString(16).padStart(8, "0")}]`;
  const tid = (base: number) => base + rng.int(40);
  const hex = (n: number) => {
    let s = "";
    for (let i = 0; i < n; i++) s += HEX[rng.u32() & 15];
    return s;
  };
  const port = () => rng.chance(0.6) ? 5060 : 1024 + rng.int(64000);

  /** Builds one record: the prefix form is chosen here; `src.func` may hold `@ context`. */
  const record = (src: Source, body: string, tagP: number): string => {
    tick();
    const tag = tagP > 0 && rng.chance(tagP) ? callTag() : "";
    const t = tid(src.level === "SECURITY" ? 2600 : src.level === "VERBOSE" ? 3300 : 1300);
    const r = rng.float();
    if (r < pSyslog) {
      return `${classicSec} pbx asterisk[1187]: ${src.level}[${t}]${tag}: ` +
        `${src.file}:${src.line} in ${src.func}: ${body}`;
    }
    if (r < pSyslog + pPlain) {
      return `[${isoSec}.${MS3[now % 1000]}] ${src.level}[${t}]${tag}: ` +
        `${src.file}:${src.line} ${src.func}: ${body}`;
    }
    if (r < pSyslog + pPlain + pClassic) {
      return `[${classicSec}] ${src.level}[${t}]${tag} ${src.file}: ${body}`;
    }
    return `[${isoSec}.${MS3[now % 1000]}] ${src.level}[${t}]${tag} ${src.file}: ${body}`;
  };

  // --- address text for attacker `a` in the forms Asterisk prints -----------------------------
  const oddV6 = (canon: string): string => {
    const g = parseV6(canon)!;
    switch (rng.int(3)) {
      case 0:
        return canon.toUpperCase();
      case 1:
        return g.map((x) => x.toString(16)).join(":");
      default:
        return g.map((x) => x.toString(16).padStart(4, "0")).join(":");
    }
  };
  /** Bare address (no port); v4 sometimes IPv4-mapped, v6 sometimes non-canonical. */
  const bare = (a: number, mappedOk = true): string => {
    const t = attackerText[a];
    if (isV6[a]) return rng.chance(0.02) ? oddV6(t) : t;
    return mappedOk && rng.chance(0.03) ? `::ffff:${t}` : t;
  };
  /** `ip:port` or `[v6]:port` (ast_sockaddr_stringify, pj_sockaddr_print with flags 3). */
  const withPort = (a: number, p = port()): string => {
    const t = bare(a);
    return t.includes(":") ? `[${t}]:${p}` : `${t}:${p}`;
  };
  /** Old `src_name:src_port` form: IPv6 unbracketed, the last group being the port. */
  const unbracketed = (a: number, p = port()): string => `${bare(a, false)}:${p}`;

  // --- counted families -----------------------------------------------------------------------
  const SIP_REG: Source = {
    level: "NOTICE",
    file: "chan_sip.c",
    line: 28835,
    func: "handle_request_register",
  };
  const SIP_INV: Source = {
    level: "NOTICE",
    file: "chan_sip.c",
    line: 26053,
    func: "handle_request_invite",
  };
  const DIST: Source = {
    level: "NOTICE",
    file: "res_pjsip/pjsip_distributor.c",
    line: 688,
    func: "log_failed_request",
  };
  const DIST_OLD: Source = { ...DIST, line: 276, func: "log_unidentified_request" };
  const SESS: Source = {
    level: "NOTICE",
    file: "res_pjsip_session.c",
    line: 3946,
    func: "new_invite",
  };
  const IAX: Source = { level: "NOTICE", file: "chan_iax2.c", line: 8130, func: "register_verify" };
  const IAX_W: Source = { ...IAX, level: "WARNING", line: 7877, func: "authenticate_verify" };
  const AMI: Source = { level: "NOTICE", file: "manager.c", line: 2405, func: "authenticate" };
  const SEC: Source = {
    level: "SECURITY",
    file: "res_security_log.c",
    line: 114,
    func: "security_event_stasis_cb",
  };

  const toHeader = (): string => {
    const u = rng.pick(USERS);
    switch (rng.int(6)) {
      case 0:
        return `"${u}"<sip:${u}@192.0.2.10>`;
      case 1:
        return `"${u}" <sip:${u}@192.0.2.10>`;
      case 2:
        return `<sip:${u}@192.0.2.10>;tag=${hex(8)}`;
      case 3:
        return rng.chance(0.5) ? `"Müller" <sip:${u}@192.0.2.10>` : `"O'Brien" <sip:${u}@pbx>`;
      default:
        return `<sip:${u}@192.0.2.10>`;
    }
  };
  const fromHeader = (): string => {
    const u = rng.pick(USERS);
    switch (rng.int(5)) {
      case 0:
        return `"${u}" <sip:${u}@192.0.2.10>`;
      case 1:
        return `<sip:anonymous@anonymous.invalid>`;
      case 2:
        return `"sipvicious" <sip:${u}@1.1.1.1>`;
      default:
        return `<sip:${u}@192.0.2.10>`;
    }
  };
  const callId = () => rng.chance(0.5) ? hex(16) : `${hex(8)}-${hex(4)}@192.0.2.10`;
  const callBody = (exten: string, ctx: string) =>
    `to extension '${exten}' rejected because extension not found in context '${ctx}'.`;
  const eventTv = () => {
    const d = new Date(now).toISOString();
    return `${d.slice(0, 23)}+0000`;
  };
  const secRecord = (a: number, name: string, service: string, tail: string, ver = "1") => {
    const v6 = isV6[a] === 1;
    const proto = service === "AMI" ? "TCP" : rng.pick(["UDP", "UDP", "TCP"]);
    const addr = bare(a);
    const fam = addr.includes(":") ? "IPV6" : "IPV4";
    const local = v6 ? "2001:db8::10" : fam === "IPV6" ? "::ffff:192.0.2.10" : "192.0.2.10";
    const lport = service === "AMI" ? 5038 : 5060;
    const rport = service === "AMI" ? 30000 + rng.int(30000) : port();
    const session = service === "PJSIP" ? callId() : `0x7f3a5c${hex(6)}`;
    const tv = service === "SIP" && rng.chance(0.3)
      ? `${Math.floor(now / 1000)}-${String(rng.int(1e6)).padStart(6, "0")}`
      : eventTv();
    const account = service === "AMI" ? rng.pick(AMI_USERS) : rng.pick(USERS);
    return record(
      SEC,
      `SecurityEvent="${name}",EventTV="${tv}",Severity="Error",Service="${service}",` +
        `EventVersion="${ver}",AccountID="${account}",SessionID="${session}",` +
        `LocalAddress="${fam}/${proto}/${local}/${lport}",` +
        `RemoteAddress="${fam}/${proto}/${addr}/${rport}"${tail}`,
      service === "AMI" ? 0 : 0.2,
    );
  };

  /** Emits one counted record for attacker `a`; returns [text, failures added]. */
  const counted = (a: number, family: string): [string, number] => {
    switch (family) {
      case "sip-register": {
        if (!isV6[a] && rng.chance(0.05)) {
          // Asterisk 1.2 - 1.6.2: IPv4 without port; 1.2 spellings now and then.
          const reason = rng.chance(0.3) ? rng.pick(REG_REASONS_12) : "Wrong password";
          const body = `Registration from '${toHeader()}' failed for '${
            attackerText[a]
          }' - ${reason}`;
          tick();
          return [`[${classicSec}] NOTICE[${tid(4200)}] chan_sip.c: ${body}`, 1];
        }
        const reason = rng.chance(0.6) ? "Wrong password" : rng.pick(REG_REASONS);
        const body = `Registration from '${toHeader()}' failed for '${withPort(a)}' - ${reason}`;
        return [record(SIP_REG, body, 0), 1];
      }
      case "sip-call":
        return [
          record(
            SIP_INV,
            `Call from '' (${withPort(a)}) ${callBody(rng.pick(EXTENS), rng.pick(CONTEXTS))}`,
            0.9,
          ),
          1,
        ];
      case "pjsip-request":
      case "pjsip-request-p2": {
        const addr = family === "pjsip-request" ? withPort(a) : unbracketed(a);
        const reason = rng.chance(0.4) ? "No matching endpoint found" : rng.pick(PJSIP_REASONS);
        return [
          record(
            DIST,
            `Request '${rng.pick(METHODS)}' from '${fromHeader()}' failed for '${addr}' ` +
              `(callid: ${callId()}) - ${reason}`,
            0,
          ),
          1,
        ];
      }
      case "pjsip-request-p1":
        return [
          record(
            DIST_OLD,
            `Request from '${fromHeader()}' failed for '${unbracketed(a)}' ` +
              `(callid: ${callId()}) - No matching endpoint found`,
            0,
          ),
          1,
        ];
      case "pjsip-tries": {
        // Windows of N = 5, 6, 7, ...; rarely a lost line (N + 2) or a window seen from its middle.
        let n: number;
        if (runAt[a] === 0) {
          n = rng.chance(0.03) ? 6 + rng.int(20) : 5;
          runTime[a] = 0.2 + rng.float() * 2;
        } else {
          n = runAt[a] + (rng.chance(0.03) ? 2 : 1);
        }
        runTime[a] += 0.05 + rng.float() * 3;
        runAt[a] = n > 400 || rng.chance(0.08) ? 0 : n;
        const last = lastTries[a];
        const add = n > last ? Math.min(n - last, 5) : Math.min(n, 5);
        lastTries[a] = n;
        const addr = rng.chance(0.8) ? withPort(a) : unbracketed(a);
        return [
          record(
            DIST,
            `Request '${rng.pick(METHODS)}' from '${fromHeader()}' failed for '${addr}' ` +
              `(callid: ${callId()}) - No matching endpoint found after ${n} tries in ` +
              `${runTime[a].toFixed(3)} ms`,
            0,
          ),
          add,
        ];
      }
      case "pjsip-call-s1":
        return [
          record(
            SESS,
            `Call from 'anonymous' (${rng.pick(TRANSPORTS)}:${unbracketed(a)}) ` +
              callBody(rng.pick(EXTENS), rng.pick(CONTEXTS)),
            0.9,
          ),
          1,
        ];
      case "pjsip-call-s2":
        return [
          record(
            SESS,
            `Call from 'anonymous' (${rng.pick(TRANSPORTS)}:${withPort(a)}) ` +
              callBody(rng.pick(EXTENS), rng.pick(CONTEXTS)),
            0.9,
          ),
          1,
        ];
      case "pjsip-call-s3": {
        const ep = rng.chance(0.8) ? "anonymous" : "webrtc-client";
        return [
          record(
            SESS,
            ` ${ep}: Call (${rng.pick(TRANSPORTS)}:${withPort(a)}) ` +
              callBody(rng.pick(EXTENS), rng.pick(CONTEXTS)),
            0.9,
          ),
          1,
        ];
      }
      case "iax2-auth": {
        const old = !isV6[a] && rng.chance(0.3);
        const addr = old ? attackerText[a] : withPort(a, 4569);
        const user = rng.pick(["guest", "1001", "admin", "iaxuser", "100"]);
        return [
          record(
            rng.chance(0.5) ? IAX_W : IAX,
            `Host ${addr} failed to authenticate as ${user}`,
            0,
          ),
          1,
        ];
      }
      case "iax2-md5":
        return [
          record(
            IAX,
            `Host ${bare(a)} failed MD5 authentication for '${rng.pick(IAX_PEERS)}' ` +
              `(${hex(32)} != ${hex(32)})`,
            0,
          ),
          1,
        ];
      case "iax2-plaintext":
        return [
          record(
            IAX,
            `Host ${bare(a)} did not provide proper plaintext password for '${
              rng.pick(IAX_PEERS)
            }'`,
            0,
          ),
          1,
        ];
      case "iax2-acl":
        return [
          record(IAX, `Host ${bare(a)} denied access to register peer '${rng.pick(IAX_PEERS)}'`, 0),
          1,
        ];
      case "iax2-noreg":
        return [
          record(IAX, `No registration for peer '${rng.pick(USERS)}' (from ${bare(a)})`, 0),
          1,
        ];
      case "iax2-rejected": {
        const addr = !isV6[a] && rng.chance(0.3) ? attackerText[a] : withPort(a, 4569);
        return [
          record(
            { ...IAX, func: "socket_process_helper" },
            `Rejected connect attempt from ${addr}, who was trying to reach ` +
              `'${rng.pick(EXTENS)}@${rng.pick(CONTEXTS)}'`,
            0,
          ),
          1,
        ];
      }
      case "ami-auth":
        return [record(AMI, `${bare(a)} failed to authenticate as '${rng.pick(AMI_USERS)}'`, 0), 1];
      case "ami-nouser":
        return [
          record(
            AMI,
            `${bare(a)} tried to authenticate with nonexistent user '${rng.pick(AMI_USERS)}'`,
            0,
          ),
          1,
        ];
      case "ami-acl":
        return [record(AMI, `${bare(a)} failed to pass IP ACL as '${rng.pick(AMI_USERS)}'`, 0), 1];
      case "security-invalid-account": {
        const service = rng.pick(["SIP", "PJSIP", "PJSIP", "AMI"]);
        const tail = service === "AMI" ? `,SessionTV="${eventTv()}"` : "";
        return [secRecord(a, "InvalidAccountID", service, tail), 1];
      }
      case "security-challenge-failed": {
        const service = rng.pick(["SIP", "PJSIP"]);
        const tail = `,Challenge="${hex(8)}",Response="${hex(32)}",ExpectedResponse="${hex(32)}"`;
        return [secRecord(a, "ChallengeResponseFailed", service, tail), 1];
      }
      case "security-invalid-password": {
        if (rng.chance(0.5)) {
          return [secRecord(a, "InvalidPassword", "AMI", `,SessionTV="${eventTv()}"`, "2"), 1];
        }
        const tail = `,Challenge="${hex(8)}",ReceivedChallenge="${hex(8)}",` +
          `ReceivedHash="${hex(32)}"`;
        return [secRecord(a, "InvalidPassword", "SIP", tail, "2"), 1];
      }
      case "security-failed-acl": {
        const [service, acl] = rng.pick([
          ["PJSIP", "not_match_endpoint_acl"],
          ["PJSIP", "not_match_endpoint_contact_acl"],
          ["SIP", "no_extension_match"],
          ["AMI", ""],
        ]);
        const tail = acl ? `,ACLName="${acl}"` : `,SessionTV="${eventTv()}"`;
        return [secRecord(a, "FailedACL", service, tail), 1];
      }
      case "dialplan-unknown-sip": {
        const addr = bare(a);
        const msg = rng.chance(0.7)
          ? `"Rejecting unknown SIP connection from ${addr}"`
          : `Rejecting unknown SIP connection from ${addr}`;
        return [
          record(
            { level: "WARNING", file: "Ext. s", line: 9, func: "@ from-sip-external" },
            msg,
            1,
          ),
          1,
        ];
      }
    }
    throw new Error(`unknown family ${family}`);
  };

  // --- benign records -------------------------------------------------------------------------
  const anyAttacker = () => attackerText[rng.int(nAttackers)];
  const lanIp = () => `192.0.2.${20 + rng.int(200)}`;
  const ext = () => String(1000 + rng.int(60));
  const chan = () => `${rng.chance(0.7) ? "PJSIP" : "SIP"}/${ext()}-${hex(8)}`;
  const APPS = [
    ["NoOp", () => `Incoming call from ${ext()}`],
    ["Set", () => `__FROM_DID=${ext()}`],
    ["Answer", () => ""],
    ["Dial", () => `PJSIP/${ext()},30,tT`],
    ["Playback", () => "custom/welcome"],
    ["GotoIf", () => `0?ext-local,${ext()},1`],
    ["Macro", () => `user-callerid,`],
    ["Hangup", () => ""],
  ] as const;
  const V = (file: string, line: number, func: string): Source => ({
    level: "VERBOSE",
    file,
    line,
    func,
  });
  const N = (file: string, line: number, func: string): Source => ({
    level: "NOTICE",
    file,
    line,
    func,
  });
  const W = (file: string, line: number, func: string): Source => ({
    level: "WARNING",
    file,
    line,
    func,
  });
  const secBenign = (name: string, tail: string, severity = "Informational") => {
    const addr = rng.chance(0.5) ? anyAttacker() : lanIp();
    const fam = addr.includes(":") ? "IPV6" : "IPV4";
    const local = fam === "IPV6" ? "2001:db8::10" : "192.0.2.10";
    return record(
      SEC,
      `SecurityEvent="${name}",EventTV="${eventTv()}",Severity="${severity}",Service="PJSIP",` +
        `EventVersion="1",AccountID="${rng.pick(USERS)}",SessionID="${callId()}",` +
        `LocalAddress="${fam}/UDP/${local}/5060",RemoteAddress="${fam}/UDP/${addr}/5060"${tail}`,
      0.2,
    );
  };

  /** Weighted list of benign record makers. Each returns one record (maybe with a 2nd line). */
  const benign: [number, () => string][] = [
    [30, () => {
      const [app, args] = rng.pick(APPS);
      return record(
        V("pbx.c", 2927, "pbx_extension_helper"),
        `Executing [${ext()}@from-internal:${1 + rng.int(12)}] ${app}("${chan()}", ` +
          `"${args()}") in new stack`,
        1,
      );
    }],
    [5, () => record(V("app_dial.c", 1025, "begin_dial_prerun"), `Called PJSIP/${ext()}`, 1)],
    [5, () => record(V("app_dial.c", 1251, "wait_for_answer"), `${chan()} is ringing`, 1)],
    [3, () =>
      record(
        V("bridge_channel.c", 2454, "bridge_channel_internal_join"),
        `Channel ${chan()} joined 'simple_bridge' basic-bridge <${hex(8)}-${hex(4)}-${hex(4)}>`,
        1,
      )],
    [2, () =>
      record(
        V("pbx.c", 4571, "__ast_pbx_run"),
        `Spawn extension (from-internal, ${ext()}, 1) exited non-zero on '${chan()}'`,
        1,
      )],
    [4, () =>
      record(
        V("chan_sip.c", 24431, "parse_register_contact"),
        `Registered SIP '${ext()}' at ${lanIp()}:5060`,
        0,
      )],
    [4, () =>
      record(
        V("res_pjsip_registrar.c", 470, "register_aor_core"),
        `Added contact 'sip:${ext()}@${rng.chance(0.2) ? anyAttacker() : lanIp()}:5060;ob' to ` +
          `AOR '${ext()}' with expiration of 3600 seconds`,
        0,
      )],
    [3, () =>
      record(
        V("res_pjsip/pjsip_options.c", 215, "sip_contact_status_notify_task"),
        `Contact ${ext()}/sip:${ext()}@${lanIp()}:5060 is now Reachable.  RTT: ` +
          `${(rng.float() * 80).toFixed(3)} msec`,
        0,
      )],
    [3, () =>
      record(
        N("chan_sip.c", 24046, "handle_response_peerpoke"),
        `Peer '${rng.pick(["trunk1", ext()])}' is now Reachable. (${rng.int(90)}ms / 2000ms)`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 24028, "handle_response_peerpoke"),
        `Peer '${ext()}' is now UNREACHABLE!  Last qualify: ${rng.int(300)}`,
        0,
      )],
    [1, () =>
      record(
        N("chan_iax2.c", 9822, "__iax2_poke_noanswer"),
        `Peer 'trunk1' is now UNREACHABLE! Time: ${2000 + rng.int(9)}`,
        0,
      )],
    [2, () =>
      record(
        N("res_rtp_asterisk.c", 7893, "ast_rtp_read"),
        `0x7f3a5c${hex(6)} -- Strict RTP learning after remote address set to: ${lanIp()}:` +
          `${10000 + rng.int(10000)}`,
        1,
      )],
    [1, () =>
      record(
        W("res_rtp_asterisk.c", 3286, "__rtp_recvfrom"),
        `RTP Read error: Unable to receive RTP: Connection refused`,
        1,
      )],
    [1, () =>
      record(
        V("manager.c", 7106, "action_login"),
        `Manager 'admin' logged on from ${lanIp()}`,
        0,
      )],
    [1, () =>
      record(
        V("manager.c", 6690, "session_destroy"),
        `Manager 'admin' logged off from ${lanIp()}`,
        0,
      )],
    [1, () =>
      record(
        V("manager.c", 6684, "session_do"),
        `Connect attempt from '${anyAttacker()}' unable to authenticate`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 23260, "handle_response_register"),
        `Failed to authenticate on REGISTER to '1001@sip.provider.example' (Tries ${
          1 + rng.int(5)
        })`,
        0,
      )],
    [1, () =>
      record(
        W("res_pjsip_outbound_registration.c", 1120, "handle_registration_response"),
        `403 Forbidden fatal response received from 'sip:192.0.2.200' on registration attempt ` +
          `to 'sip:1001@192.0.2.200', retrying in '60' seconds`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 15672, "sip_reg_timeout"),
        `   -- Registration for '1001@sip.provider.example' timed out, trying again ` +
          `(Attempt #${1 + rng.int(9)})`,
        0,
      )],
    [2, () =>
      record(
        N("chan_sip.c", 26110, "handle_request_invite"),
        `Failed to authenticate device "${rng.pick(USERS)}" <sip:${rng.pick(USERS)}@` +
          `${anyAttacker()}>;tag=as${hex(8)}`,
        0.5,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 17263, "send_fake_auth"),
        `Sending fake auth rejection for device ${ext()}<sip:${ext()}@192.0.2.10>;tag=${hex(8)}`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 28150, "handle_incoming"),
        `Unknown SIP command '${rng.pick(["FOO", "PUBLISHX", "HELLO"])}' from ` +
          `'${anyAttacker()}:5060'`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 17052, "get_destination"),
        `Invalid to address: '${ext()}' from ${anyAttacker()} (missing sip:) ` +
          `trying to use anyway...`,
        0,
      )],
    [1, () =>
      record(
        W("chan_sip.c", 16850, "register_verify"),
        `Domain 'evil.example.net' disallowed by contact ACL (violating IP ${anyAttacker()})`,
        0,
      )],
    [1, () =>
      record(
        N("chan_sip.c", 26255, "handle_request_invite"),
        `Call from '' to extension '${rng.pick(EXTENS)}' rejected because extension not found ` +
          `in context 'default'.`,
        0,
      )],
    [1, () =>
      record(
        W("res_pjsip_registrar.c", 1090, "find_registrar_aor"),
        `AOR '${ext()}' not found for endpoint '${ext()}' (${
          rng.chance(0.5) ? anyAttacker() : lanIp()
        }:5060)`,
        0,
      )],
    [1, () =>
      record(
        W("res_pjsip_registrar.c", 1120, "registrar_on_rx_request"),
        `Endpoint '${ext()}' (${lanIp()}:5060) has no configured AORs`,
        0,
      )],
    [1, () =>
      record(
        N("chan_iax2.c", 8222, "authenticate_verify"),
        `Host ${anyAttacker()} failed RSA authentication with inkeys 'provider'`,
        0,
      )],
    [3, () =>
      secBenign(
        "ChallengeSent",
        `,Challenge="${hex(8)}"`,
      )],
    [2, () => secBenign("SuccessfulAuth", `,UsingPassword="1"`)],
    [1, () => secBenign("FailedACL", `,ACLName="registrar_requested_aor_not_found"`, "Error")],
    [1, () =>
      record(
        SEC,
        `SecurityEvent="RequestNotAllowed",EventTV="${eventTv()}",Severity="Error",` +
          `Service="AMI",EventVersion="1",AccountID="",SessionID="0x7f3a5c${hex(6)}",` +
          `LocalAddress="IPV4/TCP/192.0.2.10/5038",RemoteAddress="IPV4/TCP/${lanIp()}/40001",` +
          `RequestType="Action: Originate",SessionTV="${eventTv()}"`,
        0,
      )],
    [1, () =>
      record(
        W("taskprocessor.c", 1160, "taskprocessor_push"),
        `The 'subm:ast_system-00000008' task processor queue reached 500 scheduled tasks.`,
        0,
      )],
    [1, () =>
      record(
        N("cdr.c", 1343, "cdr_object_finalize"),
        `CDR for channel '${chan()}' not posted: no answer`,
        1,
      )],
    [2, () =>
      // chan_sip's retransmission warning is one record on two physical lines.
      record(
        W("chan_sip.c", 4140, "retrans_pkt"),
        `Retransmission timeout reached on transmission ${hex(12)}@${anyAttacker()} for seqno ` +
          `${100 + rng.int(900)} (Critical Response) -- See ` +
          `https://wiki.asterisk.org/wiki/display/AST/SIP+Retransmissions\n` +
          `Packet timed out after ${6400 + rng.int(30000)}ms with no response`,
        0.5,
      )],
  ];
  const TWO_LINE = benign.length - 1;
  const pickBenign = aliasTable(Float64Array.from(benign, ([w]) => w));

  // --- main loop ------------------------------------------------------------------------------
  let buf = "";
  let bytes = 0, failures = 0, countedLines = 0;
  const flush = () => {
    bytes += Buffer.byteLength(buf, "utf8");
    sink(buf);
    buf = "";
  };
  const onRecord = opts.onRecord;
  let written = 0;
  while (written < totalLines) {
    const remaining = totalLines - written;
    let text: string;
    if (attackLeft > 0 && (attackLeft >= remaining || rng.float() * remaining < attackLeft)) {
      const a = nextAttacker();
      const family = rng.chance(0.7) ? familyNames[mainFamily[a]] : familyNames[pickFamily(rng)];
      const [line, add] = counted(a, family);
      text = line;
      counts[a] += add;
      failures += add;
      countedLines++;
      attackLeft--;
      written++;
      if (onRecord) onRecord(text, attackerText[a], add);
    } else {
      let k = pickBenign(rng);
      if (k === TWO_LINE && remaining - attackLeft < 2) k = 0;
      text = benign[k][1]();
      written += k === TWO_LINE ? 2 : 1;
      if (onRecord) onRecord(text, null, 0);
    }
    buf += text + "\n";
    if (buf.length >= 1 << 20) flush();
  }
  flush();
  for (let i = 0; i < nAttackers; i++) {
    if (counts[i] > 0) expected.set(attackerText[i], counts[i]);
  }
  return { lines: written, bytes, failures, countedLines };
}

// ---------------------------------------------------------------------------------------------
// Command line: write a log and its expected counts.

// `node --test` runs every .ts file under test/; the generator's command line runs only when asked.
if (import.meta.main && !process.env.NODE_TEST_CONTEXT) {
  const args = process.argv.slice(2);
  const opt = (name: string) => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const v = args[i + 1];
    args.splice(i, 2);
    return Number(v);
  };
  const lines = opt("--lines") ?? 100000;
  const distinct = opt("--distinct");
  const seed = opt("--seed") ?? 1;
  const out = args[0];
  if (!out) {
    process.stderr.write("usage: loggen.ts [--lines N] [--distinct N] [--seed N] OUT\n");
    process.exit(2);
  }
  const res = writeLogFile(out, {
    lines: distinct ? Math.max(lines, distinctLinesNeeded(distinct)) : lines,
    seed,
    distinctAttackers: distinct,
  });
  writeFileSync(`${out}.expected.json`, JSON.stringify(Object.fromEntries(res.expected)));
  process.stdout.write(
    `${out}: ${res.lines} lines, ${res.bytes} bytes, ${res.expected.size} addresses, ` +
      `${res.failures} failures\n`,
  );
}
