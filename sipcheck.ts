#!/usr/bin/env -S deno -R=/var/log/asterisk,/run/sipcheck.lock,/etc/asterisk,/usr/local/bin -W=/run/sipcheck.lock --allow-run=/usr/sbin/iptables,/usr/sbin/ip6tables,/usr/sbin/iptables-restore,/usr/sbin/ip6tables-restore,/bin/kill -S=uid,networkInterfaces
/**
 * sipcheck: ban the addresses that keep failing to log in to an Asterisk PBX.
 *
 * A TypeScript port of sipcheck.pl (Sinologic, 2010). Run from cron, it reads Asterisk's log,
 * counts failed registrations, calls and logins per source address, and once an address reaches
 * {@link THRESHOLD} failures adds an iptables (or ip6tables) rule that drops its packets to the
 * PBX's service ports. `sipcheck clear` removes every rule sipcheck added, and nothing else.
 *
 * It understands every failure message Asterisk 1.4 to 23 writes (chan_sip, PJSIP, IAX2, AMI,
 * the security log and FreePBX's dialplan warning), in every log format (file, `[plain]`,
 * syslog, journal, JSON), for IPv4 and IPv6, and it reads the address only from the part of a
 * line that Asterisk writes itself, so what a caller writes into a line cannot make it ban
 * somebody else. (What a plain-text log cannot show, a line feed or an escape byte a caller slipped
 * into a field, and chan_sip's Via-maddr addresses, are the README's "what remains"; a JSON
 * channel closes the first two.)
 *
 * Usage:
 * ```
 * sipcheck.ts [options] [LOG ...]   scan LOGs, ban every address with >= THRESHOLD failures
 * sipcheck.ts clear                  remove every rule sipcheck added, and nothing else
 * sipcheck.ts list                   print the addresses sipcheck bans now
 * sipcheck.ts watch [options] [LOG ...]   follow LOGs, ban as soon as an address reaches it
 * sipcheck.ts audit [--config-dir DIR] [--json]   look for toll-fraud holes in the configuration
 *
 * deno run <flags of the first line> sipcheck.ts ...     or     node sipcheck.ts ...
 * ```
 * LOG defaults to /var/log/asterisk/messages (messages.log on Asterisk 19+); a bare name is
 * looked up in /var/log/asterisk; `-` reads standard input. Options: -n/--dry-run,
 * -t/--threshold N, -i/--ignore ADDR|CIDR, --json, -q/--quiet, -h/--help, -V/--version;
 * watch also --window DURATION. watch runs until SIGTERM or SIGINT; SIGHUP reopens the logs.
 *
 * Exit codes (sysexits.h): 0 done; 64 usage error; 66 a log could not be read (the others were
 * still scanned and acted on); 69 firewall command missing or failed; 75 another sipcheck run
 * holds the lock; 77 not root where root is needed; 1 anything unexpected. `audit` follows the
 * monitoring-plugin convention instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import {
  closeSync,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { readdir } from "node:fs/promises";
import { isIP } from "node:net";
import { availableParallelism, networkInterfaces } from "node:os";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import process from "node:process";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { createGunzip } from "node:zlib";

// ---------------------------------------------------------------------------------------------
// Constants a person may want to edit
// ---------------------------------------------------------------------------------------------

/** Failures at which an address is banned (sipcheck.pl used 200). `-t` overrides it per run. */
export const THRESHOLD = 200;

/** Where Asterisk writes its logs, and the log read when none is named. */
export const LOG_DIR = "/var/log/asterisk";
/** Default log names, in order: `messages` up to Asterisk 18, `messages.log` from 19. */
export const DEFAULT_LOGS = ["messages", "messages.log"] as const;

/** Never banned: loopback. The host's own addresses are added at run time; `-i` adds more. */
export const IGNORE = ["127.0.0.0/8", "::1"] as const;

/** Our own chain in the filter table of iptables and ip6tables. */
export const CHAIN = "sipcheck";
/**
 * Ports whose packets are checked against our chain, for udp and tcp: SIP 5060 and SIP-TLS 5061,
 * IAX2 4569, AMI 5038 (every service whose failures we count). PJSIP WebSocket transports
 * (8088/8089) are not in the list; add them if you expose them.
 */
export const PORTS = [5060, 5061, 4569, 5038] as const;

/** Firewall binaries, by absolute path: cron's PATH often lacks /usr/sbin. */
export const IPTABLES = {
  4: { list: "/usr/sbin/iptables", restore: "/usr/sbin/iptables-restore" },
  6: { list: "/usr/sbin/ip6tables", restore: "/usr/sbin/ip6tables-restore" },
} as const;
/** Used to tell whether the process holding the lock still runs (Deno has no signal 0 without it). */
export const KILL = "/bin/kill";
/** One sipcheck at a time: created exclusively, holds the pid of the run that owns it. */
export const LOCK_PATH = "/run/sipcheck.lock";

/** Physical lines longer than this are ignored: Asterisk truncates a record at 8192 bytes. */
export const MAX_LINE = 8000;
/** After an open head (a record cut by a line feed the caller sent), lines starting this many
 * bytes later cannot belong to the same record; lines before that may be forged. */
export const OPEN_HEAD_WINDOW = 8192;
/**
 * The most one PJSIP `after N tries` line can add. Asterisk's unidentified_request_count is 5 by
 * default, so a real window starts at N = 5 and goes up by one per line; the cap stops a forged
 * line from claiming thousands of requests at once.
 */
export const TRIES_STEP_MAX = 5;
/**
 * chan_sip writes SecurityEvents with RemoteAddress taken from the Via header's maddr= when
 * present, so a caller can choose the address in them. They are still the only record of
 * chan_sip INVITE password guessing, and fail2ban counts them too; we count them, deliberately.
 * Set this to false on a PBX whose trunks and offices are not all in the ignore list.
 */
export const COUNT_CHAN_SIP_SECURITY_EVENTS = true;

/** This program's version. */
export const VERSION = "1.0.0";

/** Exit codes (sysexits.h). */
export const EXIT = {
  ok: 0,
  unexpected: 1,
  usage: 64,
  noInput: 66,
  unavailable: 69,
  tempFail: 75,
  noPermission: 77,
} as const;

/**
 * Bytes of log decoded into one string at a time. What a scavenge of V8's young generation finds
 * alive is mostly the string being read, and V8 grows the young generation by what survives; the
 * main thread, whose young generation cannot be capped from inside (a worker's is, see
 * WORKER_YOUNG_GENERATION_MB), reads in smaller strings: the million-address log peaked at a
 * median 123 MiB instead of 129 (1.65 GB log: 92 to 103 instead of 101 to 107), with no slowdown
 * that showed.
 */
const CHUNK_SIZE = isMainThread ? 16 << 10 : 32 << 10;
/** Bytes a scanner reads from a file at a time: fewer system calls than CHUNK_SIZE. */
const READ_SIZE = 256 << 10;

/** The Deno global, when running under Deno. */
const deno = (globalThis as { Deno?: typeof Deno }).Deno;
/** Deno before 2.8.2: its Latin-1 decoding is slow (see {@link logDecoder}), and a closed standard
 * input keeps its read pending (see the end of this file). */
const OLD_DENO = deno !== undefined && isVersionBefore(deno.version.deno, "2.8.2");

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/** The message families sipcheck counts; the README has a table with versions and examples. */
export type FamilyName =
  | "sip-register"
  | "sip-call"
  | "sip-hacking-attempt"
  | "pjsip-request"
  | "pjsip-call"
  | "iax2-auth"
  | "iax2-md5"
  | "iax2-plaintext"
  | "iax2-denied"
  | "iax2-noreg"
  | "iax2-rejected"
  | "ami-auth"
  | "security-event"
  | "dialplan-unknown-sip";

/** What a failure line says once its family is known. */
export interface Failure {
  /** The family whose pattern matched. */
  family: FamilyName;
  /** Normalised source address, or null when the line holds none that can be trusted. */
  address: string | null;
  /** PJSIP's `after N tries`: requests so far from this address in the current window. */
  tries?: number;
  /** The caller's field runs to the end of the line without the family's fixed tail: the record
   * was cut by a line feed in that field, and the next lines may be forged. */
  openHead?: boolean;
  /** A SecurityEvent whose possible addresses disagree: nothing is counted. */
  ambiguous?: boolean;
}

/** Failures per address, and what the scan saw along the way. */
export interface Tally {
  /** Failures per normalised address, in first-seen order. */
  counts: AddressCounts;
  /** Last `after N tries` value per address. */
  lastTries: AddressCounts;
  /** Physical lines read. */
  lines: number;
  /** Failures counted (the sum of `counts`). */
  failures: number;
  /** Lines over {@link MAX_LINE} bytes, ignored. */
  longLines: number;
  /** Open heads seen (records cut by a caller's line feed). */
  openHeads: number;
  /** Failure lines not counted because they follow an open head too closely. */
  suppressed: number;
  /** SecurityEvents not counted because their address was ambiguous. */
  ambiguous: number;
}

/** What sipcheck does about one address. */
export type Action = "banned" | "would-ban" | "already-banned" | "ignored" | "below-threshold";

/** An address at or over the threshold, and what happens to it. */
export interface Decision {
  ip: string;
  failures: number;
  action: Action;
}

/** An address block: `a.b.c.d/n` or `v6/n`. */
export interface Cidr {
  version: 4 | 6;
  /** The block's address as 32-bit words: one for IPv4, four for IPv6. */
  words: number[];
  prefix: number;
}

/** IP version. */
export type IpVersion = 4 | 6;

/** What our part of one family's firewall looks like now. */
export interface ChainState {
  /** Our chain exists. */
  exists: boolean;
  /** Addresses our chain drops. */
  bans: Set<string>;
  /** Rules anywhere that jump (`-j`) or go (`-g`) to our chain, as `iptables -S` prints them. */
  jumps: string[];
  /** Where each of `jumps` stands in its own chain (1 = first), to put ours back there. */
  jumpPositions: number[];
  /** Rules in our chain that sipcheck does not write (anything but a ban of one address). */
  foreignRules: string[];
}

/** Result of running a program. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program by absolute path with an argv array (never a shell), optionally feeding stdin. */
export type Runner = (
  binary: string,
  args: readonly string[],
  input?: string,
) => Promise<RunResult>;

/** What `main` needs from the outside world; tests pass fakes. */
export interface Deps {
  /** Text, or UTF-8 bytes (the `--json` report's pieces, which share one buffer: a piece must be
   * written out or copied before the promise returned settles, as the next one overwrites it). */
  stdout: (text: string | Uint8Array) => void | Promise<void>;
  stderr: (text: string) => void;
  run: Runner;
  uid: () => number;
  lockPath: string;
  hostAddresses: () => string[];
  stdin: () => AsyncIterable<Uint8Array>;
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/**
 * How a family prints its address:
 * - `bare`: `a.b.c.d` or an unbracketed IPv6 address (ast_sockaddr_stringify_addr,
 *   ast_inet_ntoa, security events);
 * - `sockaddr`: `a.b.c.d` (ast_inet_ntoa, before 1.8), `a.b.c.d:port` and `[v6]:port`
 *   (ast_sockaddr_stringify, 1.8+);
 * - `srcname`: `a.b.c.d:port`, `[v6]:port`, or PJSIP's old `v6:port` with no brackets, whose last
 *   group is the port.
 */
export type AddressForm = "bare" | "sockaddr" | "srcname";

const CHAR_SPACE = 32;
const CHAR_PERCENT = 37;
const CHAR_QUOTE = 39;
const CHAR_SLASH = 47;
const CHAR_COLON = 58;
const CHAR_LESS_THAN = 60;
const CHAR_CLOSE_BRACKET = 93;

/*
 * The hand-written readers get the text they read twice: as a string `s`, for regexes, searches
 * and the addresses they return, and as its bytes `b`, for reading it one character at a time (a
 * byte of a Uint8Array reads in about half the time of a character of a string, whose kind V8
 * checks at each read: the 1.65 GB log of the bench took a quarter less CPU time). `b[i]` is
 * `s.charCodeAt(i)`, or 0xFF where that is above 255 (see textBytes).
 */

/** The character codes of `text`, a fixed text that the readers compare bytes with. */
function ascii(text: string): Uint8Array {
  return writeTextBytes(text, new Uint8Array(text.length));
}

/** True when `b` holds `text` (see {@link ascii}) at `at`: `s.startsWith` on bytes, twice as
 * fast. */
function hasAt(b: Uint8Array, at: number, text: Uint8Array): boolean {
  if (at < 0 || at + text.length > b.length) return false;
  for (let i = 0; i < text.length; i++) if (b[at + i] !== text[i]) return false;
  return true;
}

/** Where {@link textBytes} writes a text of up to 64 characters (nearly always an address). */
const TEXT_SCRATCH = new ArrayBuffer(64);

/**
 * The bytes the hand-written readers look at for `text`, read as characters of a log line: each
 * character's code, or 0xFF for one above 255. They look only for ASCII, and no other character
 * can pass for it. (The scanner reads a log's bytes as Latin-1 text, so there the bytes are the
 * log's own.) A short text's bytes are in memory the next call reuses: the caller reads them
 * before it calls this again (a new array each time costs more than reading an address).
 */
function textBytes(text: string): Uint8Array {
  const length = text.length;
  return writeTextBytes(
    text,
    length <= TEXT_SCRATCH.byteLength
      ? new Uint8Array(TEXT_SCRATCH, 0, length)
      : new Uint8Array(length),
  );
}

/** {@link textBytes} written into `bytes`, which has room for them. */
function writeTextBytes(text: string, bytes: Uint8Array): Uint8Array {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    bytes[i] = c < 256 ? c : 255;
  }
  return bytes;
}

/** Where {@link lineBytes} writes; it grows to the longest line read as text, up to MAX_LINE. */
let lineScratch = new ArrayBuffer(1024);

/**
 * {@link textBytes} of a line that {@link parseLine} reads, in memory that the next line reuses;
 * apart from textBytes', as an address in the line is read while the line is. (A line longer than
 * MAX_LINE, which the scanner never reads, gets memory of its own, so as not to be kept.)
 */
function lineBytes(line: string): Uint8Array {
  const length = line.length;
  if (length > MAX_LINE) return writeTextBytes(line, new Uint8Array(length));
  if (length > lineScratch.byteLength) {
    lineScratch = new ArrayBuffer(Math.min(MAX_LINE, Math.max(length, lineScratch.byteLength * 2)));
  }
  return writeTextBytes(line, new Uint8Array(lineScratch, 0, length));
}

/** The first `char` (a character code) in b[from, end), or -1. Unlike an `indexOf`, it does not
 * search on through the lines after `end` when the line lacks it. */
function indexIn(b: Uint8Array, char: number, from: number, end: number): number {
  for (let i = from; i < end; i++) if (b[i] === char) return i;
  return -1;
}

/** The last `char` (a character code) in b[start, before], or -1. A `lastIndexOf` would search
 * back through the lines before `start`, and V8 runs it outside the compiled code. */
function lastIndexIn(b: Uint8Array, char: number, before: number, start: number): number {
  for (let i = before; i >= start; i--) if (b[i] === char) return i;
  return -1;
}

/** True if b[from, end) is `:` and one to five digits. */
function isPortSuffix(b: Uint8Array, from: number, end: number): boolean {
  const digits = end - from - 1;
  if (digits < 1 || digits > 5 || b[from] !== 58 /* : */) return false;
  for (let i = from + 1; i < end; i++) {
    const c = b[i];
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/**
 * Reads an address printed by Asterisk and returns it normalised (IPv4 dotted, IPv6 compressed
 * lower case, `::ffff:a.b.c.d` as `a.b.c.d`, no zone, no port), or null if it is not an IP
 * address in the given form (a host name, `(null)`, garbage).
 */
export function normaliseAddress(text: string, form: AddressForm): string | null {
  return readAddress(text, textBytes(text), 0, text.length, form);
}

/**
 * {@link normaliseAddress} of s[start, end) (bytes `b`), read in place: the scanner calls it on
 * the chunk of log it holds, so an address is copied out only once, and rewritten only when
 * Asterisk did not print it in its normal form already. Leaves what it read in
 * {@link lastAddress}.
 */
function readAddress(
  s: string,
  b: Uint8Array,
  start: number,
  end: number,
  form: AddressForm,
): string | null {
  const quadEnd = dottedQuadEnd(b, start, end);
  if (quadEnd !== -1) {
    // IPv4 (no IPv6 text starts with a dotted quad): `a.b.c.d`, and `:port` where the form has one.
    const valid = quadEnd === end
      ? form !== "srcname"
      : form !== "bare" && isPortSuffix(b, quadEnd, end);
    return valid ? rememberIPv4(s.slice(start, quadEnd), quadNumber) : null;
  }
  let hostEnd = end;
  if (b[start] === 91 /* [ */) {
    const close = indexIn(b, CHAR_CLOSE_BRACKET, start, end);
    if (form === "bare" || close === -1 || !isPortSuffix(b, close + 1, end)) {
      return null;
    }
    start++;
    hostEnd = close;
  } else if (form === "sockaddr") return null; // it brackets IPv6 (and always adds the port)
  else if (form === "srcname") {
    const lastColon = lastIndexIn(b, CHAR_COLON, end - 1, start);
    if (lastColon < start || !isPortSuffix(b, lastColon, end)) return null;
    hostEnd = lastColon;
  }
  return readIPv6Host(s, b, start, hostEnd);
}

/** The address {@link dottedQuadEnd} last read, as a 32-bit number. */
let quadNumber = 0;

/** Where the IPv4 address in canonical dotted form (no leading zeros) that starts b[start, end)
 * ends, or -1 if it does not start with one; what follows is for the caller to judge. The address
 * is left in {@link quadNumber}. */
function dottedQuadEnd(b: Uint8Array, start: number, end: number): number {
  let i = start;
  let number = 0;
  for (let octet = 0; octet < 4; octet++) {
    if (octet > 0) {
      if (i >= end || b[i] !== 46 /* . */) return -1;
      i++;
    }
    const first = i < end ? b[i] - 48 : -1;
    if (!(first >= 0 && first <= 9)) return -1;
    let value = first;
    i++;
    if (first !== 0) {
      for (let digits = 1; digits < 3 && i < end; digits++, i++) {
        const digit = b[i] - 48;
        if (!(digit >= 0 && digit <= 9)) break;
        value = value * 10 + digit;
      }
      if (value > 255) return -1;
    }
    number = number * 256 + value;
  }
  const next = i < end ? b[i] : -1;
  if (next >= 48 && next <= 57) return -1;
  quadNumber = number;
  return i;
}

/** The dotted IPv4 text as a 32-bit number, or -1 if it is not one (in its one canonical form). */
function ipv4Number(text: string): number {
  return dottedQuadEnd(textBytes(text), 0, text.length) === text.length ? quadNumber : -1;
}

/** Writes the decimal digits of `n`, a whole number from 0 to 2^53, as ASCII into `bytes` at
 * `at`; returns where they end. */
function writeDigits(n: number, bytes: Uint8Array, at: number): number {
  let end = at + 1;
  for (let power = 10; power <= n; power *= 10) end++;
  for (let i = end - 1; i >= at; i--) {
    const digit = n % 10;
    bytes[i] = 48 + digit;
    n = (n - digit) / 10;
  }
  return end;
}

/** The dotted text of a 32-bit IPv4 number. */
function ipv4Text(number: number): string {
  return `${number >>> 24}.${(number >>> 16) & 255}.${(number >>> 8) & 255}.${number & 255}`;
}

/**
 * The last address read in full, with the numbers it was read as: {@link AddressCounts} nearly
 * always counts it next, and need not read it again. Its text is canonical by construction.
 */
const lastAddress = { text: null as string | null, ipv6: false, w0: 0, w1: 0, w2: 0, w3: 0 };

/** Remembers the IPv4 address `number`, written as `text`. */
function rememberIPv4(text: string, number: number): string {
  lastAddress.text = text;
  lastAddress.ipv6 = false;
  lastAddress.w0 = number;
  return text;
}

/** Remembers the IPv6 address in {@link IPV6_GROUPS}, written as `text`. */
function rememberIPv6(text: string): string {
  const g = IPV6_GROUPS;
  lastAddress.text = text;
  lastAddress.ipv6 = true;
  lastAddress.w0 = ((g[0] << 16) | g[1]) >>> 0;
  lastAddress.w1 = ((g[2] << 16) | g[3]) >>> 0;
  lastAddress.w2 = ((g[4] << 16) | g[5]) >>> 0;
  lastAddress.w3 = ((g[6] << 16) | g[7]) >>> 0;
  return text;
}

/**
 * Reads `text` into {@link lastAddress} if it is an address written exactly in its canonical
 * form (as {@link normaliseAddress} writes it); false otherwise.
 */
function rememberCanonical(text: string): boolean {
  if (text === lastAddress.text) return true;
  const b = textBytes(text);
  if (dottedQuadEnd(b, 0, text.length) === text.length) {
    rememberIPv4(text, quadNumber);
    return true;
  }
  if (!readIPv6(b, 0, text.length) || !isCanonicalIPv6(b, 0, text.length)) return false;
  rememberIPv6(text);
  return true;
}

/** The IPv6 host (no port, no brackets, maybe a zone) at s[start, end) (bytes `b`) normalised,
 * or null if it is not one. */
function readIPv6Host(s: string, b: Uint8Array, start: number, end: number): string | null {
  const zone = indexIn(b, CHAR_PERCENT, start, end);
  if (zone !== -1) end = zone;
  if (!readIPv6(b, start, end)) return null;
  const g = IPV6_GROUPS;
  if (isMappedIPv4(g)) {
    const number = ((g[6] << 16) | g[7]) >>> 0;
    // `::ffff:a.b.c.d`, as Asterisk prints it, ends in the normal text already.
    const text = embeddedQuadAt !== -1 ? s.slice(embeddedQuadAt, end) : ipv4Text(number);
    return rememberIPv4(text, number);
  }
  return rememberIPv6(isCanonicalIPv6(b, start, end) ? s.slice(start, end) : ipv6Text(g));
}

function hexDigitValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const lower = c | 32;
  return lower >= 97 && lower <= 102 ? lower - 87 : -1;
}

/** The eight groups {@link readIPv6} read last (scratch space: copy what is kept). */
const IPV6_GROUPS: number[] = [0, 0, 0, 0, 0, 0, 0, 0];
/** Where the dotted IPv4 address that ended the IPv6 text {@link readIPv6} read last starts, or
 * -1 if it had none. */
let embeddedQuadAt = -1;

/**
 * Reads the IPv6 address written without a zone at b[start, end) into {@link IPV6_GROUPS}; false
 * if it is not one. Accepts exactly what `isIP` accepts as IPv6 (a test compares them): groups of
 * one to four hex digits, at most one `::` standing for one or more zero groups, and optionally a
 * dotted IPv4 address as the last two groups. Read by hand: it is on the hot path of every IPv6
 * failure.
 */
function readIPv6(b: Uint8Array, start: number, end: number): boolean {
  const g = IPV6_GROUPS;
  let count = 0;
  let gap = -1; // where "::" stands among the groups
  let i = start;
  embeddedQuadAt = -1;
  if (i < end && b[i] === 58 /* : */) {
    if (i + 1 >= end || b[i + 1] !== 58) return false;
    gap = 0;
    i += 2;
  }
  while (i < end) {
    let value = 0;
    let j = i;
    for (let digit; j < end && (digit = hexDigitValue(b[j])) !== -1; j++) {
      if (j - i === 4) return false;
      value = value * 16 + digit;
    }
    if (j === i) return false;
    if (j < end && b[j] === 46 /* . */) {
      if (count > 6 || dottedQuadEnd(b, i, end) !== end) return false;
      g[count++] = quadNumber >>> 16;
      g[count++] = quadNumber & 0xffff;
      embeddedQuadAt = i;
      break;
    }
    if (count === 8) return false;
    g[count++] = value;
    if (j === end) break;
    if (b[j] !== 58 || j + 1 === end) return false;
    i = j + 1;
    if (b[i] === 58) {
      if (gap !== -1) return false;
      gap = count;
      i++;
    }
  }
  if (gap === -1) return count === 8;
  if (count > 7) return false;
  const zeros = 8 - count;
  for (let k = count - 1; k >= gap; k--) g[k + zeros] = g[k];
  for (let k = gap; k < gap + zeros; k++) g[k] = 0;
  return true;
}

/**
 * The eight 16-bit groups of an IPv6 address written without a zone, or null if `text` is not
 * one (see {@link readIPv6}).
 */
export function ipv6Groups(text: string): number[] | null {
  return readIPv6(textBytes(text), 0, text.length) ? IPV6_GROUPS.slice() : null;
}

/**
 * RFC 5952 text of a valid IPv6 address: lower case, no leading zeros, the longest run of two or
 * more zero groups as `::`. IPv4-mapped addresses come back as plain IPv4.
 */
export function canonicalIPv6(text: string): string {
  return ipv6Text(ipv6Groups(text) as number[]);
}

/** RFC 5952 text of eight groups (see {@link canonicalIPv6}). */
function ipv6Text(g: readonly number[]): string {
  if (isMappedIPv4(g)) return `${g[6] >> 8}.${g[6] & 255}.${g[7] >> 8}.${g[7] & 255}`;
  const gap = longestZeroRun(g);
  let text = "";
  for (let k = 0; k < 8; k++) {
    if (k === gap.start) {
      text += "::";
      k += gap.length - 1;
      continue;
    }
    if (k > 0 && k !== gap.start + gap.length) text += ":";
    text += g[k].toString(16);
  }
  return text;
}

/** The groups of the IPv6 address being written by {@link AddressCounts.writeAddressAt}. */
const WRITTEN_GROUPS: number[] = [0, 0, 0, 0, 0, 0, 0, 0];

/** The ASCII codes of the hexadecimal digits, lower case. */
const HEX_DIGITS = ascii("0123456789abcdef");

/**
 * Writes the IPv6 address of groups `g` as {@link ipv6Text} writes it, as ASCII into `bytes` at
 * `at`, and returns where it ends; -1 for an IPv4-mapped one, which ipv6Text writes as IPv4 (and
 * which {@link AddressCounts} never holds as IPv6). `bytes` needs room for 39 bytes.
 */
function writeIPv6(g: readonly number[], bytes: Uint8Array, at: number): number {
  if (isMappedIPv4(g)) return -1;
  const gap = longestZeroRun(g);
  for (let k = 0; k < 8; k++) {
    if (k === gap.start) {
      bytes[at++] = 58; // :
      bytes[at++] = 58;
      k += gap.length - 1;
      continue;
    }
    if (k > 0 && k !== gap.start + gap.length) bytes[at++] = 58;
    const group = g[k];
    const top = group >= 0x1000 ? 12 : group >= 0x100 ? 8 : group >= 0x10 ? 4 : 0;
    for (let shift = top; shift >= 0; shift -= 4) bytes[at++] = HEX_DIGITS[(group >> shift) & 15];
  }
  return at;
}

/**
 * True when b[start, end), whose groups {@link readIPv6} has just read, is written exactly as
 * {@link ipv6Text} writes them; compared in place, without writing that text.
 */
function isCanonicalIPv6(b: Uint8Array, start: number, end: number): boolean {
  const g = IPV6_GROUPS;
  if (isMappedIPv4(g)) return false; // written as IPv4
  const gap = longestZeroRun(g);
  let i = start;
  for (let k = 0; k < 8; k++) {
    if (k === gap.start) {
      if (b[i] !== 58 || b[i + 1] !== 58) return false;
      i += 2;
      k += gap.length - 1;
      continue;
    }
    if (k > 0 && k !== gap.start + gap.length) {
      if (b[i] !== 58 /* : */) return false;
      i++;
    }
    const value = g[k];
    const digits = value < 16 ? 1 : value < 256 ? 2 : value < 4096 ? 3 : 4;
    for (let shift = 4 * (digits - 1); shift >= 0; shift -= 4) {
      if (b[i++] !== HEX_DIGITS[(value >> shift) & 15]) return false;
    }
  }
  return i === end;
}

/** True for the groups of an IPv4-mapped address (`::ffff:a.b.c.d`). */
function isMappedIPv4(g: readonly number[]): boolean {
  return g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff;
}

/** The first longest run of two or more zero groups, which RFC 5952 writes as `::` (start -1
 * for none). */
function longestZeroRun(g: readonly number[]): { start: number; length: number } {
  let start = -1;
  let length = 1;
  for (let k = 0; k < 8;) {
    if (g[k] !== 0) {
      k++;
      continue;
    }
    let j = k;
    while (j < 8 && g[j] === 0) j++;
    if (j - k > length) {
      start = k;
      length = j - k;
    }
    k = j;
  }
  return { start, length };
}

/** An address as 32-bit words (one for IPv4, four for IPv6), or null if it is not one. */
function addressWords(address: string): number[] | null {
  const ipv4 = ipv4Number(address);
  if (ipv4 !== -1) return [ipv4];
  const g = ipv6Groups(address);
  return g && [0, 2, 4, 6].map((i) => ((g[i] << 16) | g[i + 1]) >>> 0);
}

/** True when the first `prefix` bits of two addresses (as {@link addressWords}) agree. */
function samePrefix(a: readonly number[], b: readonly number[], prefix: number): boolean {
  for (let word = 0; word * 32 < prefix; word++) {
    const mask = (0xffffffff << (32 - Math.min(32, prefix - word * 32))) >>> 0;
    if (((a[word] ^ b[word]) & mask) !== 0) return false;
  }
  return true;
}

/** Parses `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6); null when malformed. */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf("/");
  let address = slash === -1 ? text : text.slice(0, slash);
  // An IPv6 zone (fe80::1%eth0) means nothing to iptables: the address alone is meant.
  const zone = address.indexOf("%");
  if (zone !== -1 && address.includes(":")) address = address.slice(0, zone);
  const version = isIP(address);
  if (version !== 4 && version !== 6) return null;
  const width = version === 4 ? 32 : 128;
  let prefix = width;
  if (slash !== -1) {
    const digits = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(digits) || Number(digits) > width) return null;
    prefix = Number(digits);
  }
  const normal = version === 4 ? address : canonicalIPv6(address);
  const normalVersion = isIP(normal) as IpVersion;
  if (normalVersion === 4 && version === 6) {
    // ::ffff:a.b.c.d/n is an IPv4 block
    if (prefix < 96) return null;
    prefix -= 96;
  }
  return { version: normalVersion, words: addressWords(normal) as number[], prefix };
}

/** True when the normalised address lies in one of the blocks. */
export function isInAny(address: string, blocks: readonly Cidr[]): boolean {
  const words = addressWords(address);
  if (words === null) return false;
  const version = words.length === 1 ? 4 : 6;
  return blocks.some((block) =>
    block.version === version && samePrefix(words, block.words, block.prefix)
  );
}

// ---------------------------------------------------------------------------------------------
// Line prefixes (main/logger.c)
// ---------------------------------------------------------------------------------------------

/** Where a record's prefix says it comes from, and where its message starts. */
interface Prefix {
  level: string;
  /** The watched source file it names. */
  source: Source;
  /** Index of the message body. For `Ext.` lines, of the text after `Ext. `. */
  body: number;
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isLowerHex(c: number): boolean {
  return isDigit(c) || (c >= 97 && c <= 102);
}
/** The levels of the families sipcheck reads (dialplan Log() lines included). */
const LEVELS = ["NOTICE", "WARNING", "SECURITY"] as const;

const EXT = ascii("Ext. ");
const NOTICE_NAME = ascii("NOTICE");
const WARNING_NAME = ascii("WARNING");
const SECURITY_NAME = ascii("SECURITY");

/** The level of LEVELS written at b[at] (what follows is for the caller to judge), or `""`. One
 * look at the first letter settles most lines, which are VERBOSE or DEBUG. */
function levelWrittenAt(b: Uint8Array, at: number): string {
  switch (b[at]) {
    case 78: // N
      return hasAt(b, at, NOTICE_NAME) ? "NOTICE" : "";
    case 87: // W
      return hasAt(b, at, WARNING_NAME) ? "WARNING" : "";
    case 83: // S
      return hasAt(b, at, SECURITY_NAME) ? "SECURITY" : "";
  }
  return "";
}

/** A prefix that is well formed but names a level or file sipcheck does not read. */
const IRRELEVANT: Prefix = Object.freeze({ level: "", source: source("", null, []), body: 0 });

/** The watched source file named at b[start, end), or null. */
function watchedFileAt(b: Uint8Array, start: number, end: number): Source | null {
  const candidates = SOURCES_BY_LENGTH[end - start];
  if (candidates === undefined) return null;
  for (const source of candidates) if (hasAt(b, start, source.name)) return source;
  return null;
}

/**
 * What {@link readFilePrefix} last found in `text`: the first `]` at or after `bracketFrom`, and
 * the first `: ` at or after `colonFrom` (the text's length where there was none). A prefix that
 * lacks one sends the search on through the lines after it, and a run of such lines (a caller's
 * line feeds can make one) would be searched again for each of its lines. From any point between
 * where a search started and what it found, the first one is the same, so the answer serves the
 * lines in between and every byte is searched once.
 */
const prefixMarks = { text: "", bracketFrom: 0, bracket: -1, colonFrom: 0, colonSpace: -1 };

/** Starts {@link prefixMarks} afresh when `s` is not the text they are for. */
function marksFor(s: string): typeof prefixMarks {
  const marks = prefixMarks;
  if (marks.text !== s) {
    marks.text = s;
    marks.bracket = marks.colonSpace = -1;
  }
  return marks;
}

/** The first `]` in s at or after `from`, or s.length if there is none. */
function closeBracketFrom(s: string, from: number): number {
  const marks = marksFor(s);
  if (from >= marks.bracketFrom && from <= marks.bracket) return marks.bracket;
  const at = s.indexOf("]", from);
  marks.bracketFrom = from;
  return marks.bracket = at === -1 ? s.length : at;
}

/** The first `: ` in s at or after `from`, or s.length if there is none. */
function colonSpaceFrom(s: string, from: number): number {
  const marks = marksFor(s);
  if (from >= marks.colonFrom && from <= marks.colonSpace) return marks.colonSpace;
  // A search for one character is V8's fastest, and the first `:` is nearly always the one.
  let at = s.indexOf(":", from);
  while (at !== -1 && s.charCodeAt(at + 1) !== 32) at = s.indexOf(":", at + 1);
  marks.colonFrom = from;
  return marks.colonSpace = at === -1 ? s.length : at;
}

/**
 * File channels, default formatter, 1.4 – master: `[date] LEVEL[tid][C-xxxxxxxx] file.c: `, that
 * is `/^\[[^\]]*\] [A-Z][A-Z0-9_]* ?\[\d+\](?:\[C-[0-9a-f]{8}\])? (?:[\w./-]+\.c: |Ext\. )/`,
 * read by hand at s[start, end) because every line of a log goes through it. Returns null when
 * the line does not start with such a prefix, and {@link IRRELEVANT} when it does but its level
 * or file is not one sipcheck reads (most lines of a log: they cost a few comparisons). Dialplan
 * Log() lines name the file `Ext. <exten>`; their body is taken from after `Ext. `.
 */
function readFilePrefix(s: string, b: Uint8Array, start: number, end: number): Prefix | null {
  if (b[start] !== 91 /* [ */) return null;
  const dateEnd = closeBracketFrom(s, start);
  if (dateEnd + 1 >= end || b[dateEnd + 1] !== 32) return null;
  let p = dateEnd + 2;
  const level = levelWrittenAt(b, p);
  if (level === "") return IRRELEVANT;
  p += level.length;
  if (b[p] === 32) p++;
  if (b[p] !== 91 || !isDigit(b[p + 1])) return null;
  for (p += 2; isDigit(b[p]); p++);
  if (b[p++] !== 93 /* ] */) return null;
  if (b[p] === 91 && b[p + 1] === 67 && b[p + 2] === 45) {
    for (let i = p + 3; i < p + 11; i++) if (!isLowerHex(b[i])) return null;
    if (b[p + 11] !== 93) return null;
    p += 12;
  }
  if (b[p++] !== 32 || p >= end) return null;
  if (b[p] === 69 /* E */ && hasAt(b, p, EXT) && p + 5 <= end) {
    return { level, source: DIALPLAN, body: p + 5 };
  }
  const colon = colonSpaceFrom(s, p);
  if (colon >= end) return null;
  const source = watchedFileAt(b, p, colon);
  return source === null ? IRRELEVANT : { level, source, body: colon + 2 };
}

/**
 * Console and `[plain]` (16.14+): `[date] LEVEL[tid]: file.c:line function: `; syslog (1.6+):
 * `<syslog header> asterisk[pid]: LEVEL[tid]: file.c:line in function: `; the journal's copy of
 * the console (`<syslog header> asterisk[pid]: [date] LEVEL…`) and its bare message
 * (`journalctl -o cat`). The syslog day may have one or two spaces or a leading zero, the time a
 * fraction (`journalctl -o short-precise`).
 */
function locatedPrefix(level: string, file: string): RegExp {
  return new RegExp(
    "^(?:(?:[A-Z][a-z]{2} {1,2}\\d{1,2} \\d\\d:\\d\\d:\\d\\d(?:\\.\\d+)?|" +
      "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(?:\\.\\d+)?(?:Z|[+-]\\d\\d:?\\d\\d))" +
      " [^ \\n]+ asterisk\\[\\d+\\]: )?" +
      `(?:\\[[^\\]\\n]*\\] )?${level} ?\\[\\d+\\](?:\\[C-[0-9a-f]{8}\\])?: ` +
      `(?:${file}:\\d+ (?:in )?\\w+: |Ext\\. )`,
  );
}
const LOCATED_PREFIX = locatedPrefix("([A-Z][A-Z0-9_]*)", "([\\w./-]+\\.c)");

/** Reads any of the prefixes above from a whole line. */
function readPrefix(line: string, b: Uint8Array): Prefix | null {
  const prefix = readFilePrefix(line, b, 0, line.length);
  if (prefix) return prefix;
  const located = LOCATED_PREFIX.exec(line);
  if (!located) return null;
  const source = located[2] === undefined
    ? DIALPLAN
    : watchedFileAt(textBytes(located[2]), 0, located[2].length);
  const level = (LEVELS as readonly string[]).includes(located[1]) ? located[1] : "";
  return source === null || level === "" ? IRRELEVANT : { level, source, body: located[0].length };
}

/** ANSI colour codes (SGR), present only in console output copied to the journal. */
// deno-lint-ignore no-control-regex
const SGR = /\x1b\[[0-9;]*m/g;

/** Control characters inside a JSON message: escaped by the JSON channel, so never a new line. */
const JSON_LINE_BREAKS = /[\r\n]/g;

// ---------------------------------------------------------------------------------------------
// Asterisk message families: one anchored pattern each, on the side Asterisk writes
// ---------------------------------------------------------------------------------------------

/** An address as Asterisk prints it without a port (IPv6 unbracketed, optional zone). */
const BARE = "[0-9A-Fa-f.:]+(?:%[\\w.-]+)?";

/** chan_sip registration reasons (handle_request_register), 1.2's older wordings included. */
const SIP_REGISTER_REASONS = [
  "Wrong password",
  "Username/auth name mismatch",
  "No matching peer found",
  "Not a local domain",
  "Not a local SIP domain",
  "Peer is not supposed to register",
  "Device does not match ACL",
  "ACL error (permit/deny)",
  "Device not configured to use this transport type",
  "RTP initialization failed",
  "Unknown failure",
  "Unknown error",
] as const;

/** SIP_REGISTER_REASONS by length. */
const REASONS_BY_LENGTH: Uint8Array[][] = [];
for (const reason of SIP_REGISTER_REASONS) {
  (REASONS_BY_LENGTH[reason.length] ??= []).push(ascii(reason));
}

/** True when b[start, end) is one of SIP_REGISTER_REASONS. */
function isSipRegisterReason(b: Uint8Array, start: number, end: number): boolean {
  const candidates = REASONS_BY_LENGTH[end - start];
  if (candidates === undefined) return false;
  for (const reason of candidates) if (hasAt(b, start, reason)) return true;
  return false;
}

/**
 * channels/chan_sip.c handle_request_invite(), 1.8.5 – 20.x: `"Call from '%s' (%s) to extension
 * '%s' rejected because extension not found in context '%s'.\n"`. The extension is the caller's
 * (percent-decoded, so it may hold a line feed); the address comes before it.
 */
const SIP_CALL = /^Call from '[^']*' \(([^()' ]+)\) to extension '/;
/** The same message before 1.8.5, without an address: only its open heads matter. */
const SIP_CALL_NO_ADDRESS = /^Call from '[^']*' to extension '/;
/** The fixed end of the call messages that carry an address (chan_sip 1.8.5+, res_pjsip_session):
 * the context is always there, so a caller who closes a cut record must at least know it. */
const CALL_TAIL = /' rejected because extension not found in context '[^']*'\.$/;
/** The end of chan_sip's call message before 1.8.5, with or without the context. */
const OLD_CALL_TAIL = /' rejected because extension not found(?: in context '[^']*')?\.$/;

/**
 * Not in any Asterisk release: a patched chan_sip.c (fail2ban issue #1000, 2015) writes
 * `hacking attempt detected '<ip>'`, and fail2ban matches it.
 */
const SIP_HACKING_ATTEMPT = new RegExp(`^hacking attempt detected '(${BARE})'$`);

/**
 * res/res_pjsip_session.c new_invite(), S1 (12.0 – 16.0, address `src_name:port`) and S2 (13.24+,
 * 15.7+, 16.1 – 18.0, `[v6]:port`): `"Call from '%s' (%s:%s) to extension '%s' rejected because
 * extension not found in context '%s'.\n"`.
 */
const PJSIP_CALL = /^Call from '[^']*' \([A-Z0-9-]+:([^()' ]+)\) to extension '/;
/** S3 (16.15+, 17.9+, 18.1+ – master), through ast_trace_log, so the body starts with a space:
 * `" %s: Call (%s:%s) to extension '%s' rejected because extension not found in context '%s'.\n"` */
const PJSIP_CALL_TRACE = /^ ?[^ ]+: Call \([A-Z0-9-]+:([^()' ]+)\) to extension '/;

/** res/res_pjsip/pjsip_distributor.c: the method token of `Request '%s' from …` (may hold `'`). */
const PJSIP_METHOD = /^[A-Za-z0-9\-.!%*_+`'~]+$/;
/** The characters of PJSIP_METHOD, by code, for reading the method in place. */
const METHOD_CHARS = new Uint8Array(128);
for (let c = 0; c < 128; c++) METHOD_CHARS[c] = PJSIP_METHOD.test(String.fromCharCode(c)) ? 1 : 0;

/** channels/chan_iax2.c, 1.4 – master: `"Host %s failed to authenticate as %s\n"` (≤ 11 bare,
 * 12+ with port). The user name runs to the end of the line. */
const IAX2_AUTH = /^Host ([^ ]+) failed to authenticate as /;
/** chan_iax2.c: `"Host %s failed MD5 authentication for '%s' (%s != %s)\n"` (REGREQ). */
const IAX2_MD5 = new RegExp(`^Host (${BARE}) failed MD5 authentication for '`);
/** Its end, `/^[^']*' \(.* != .*\)$/s`: the peer name (server-written), then the digests, the
 * second one the caller's. A literal regex backtracks quadratically on a hostile line. */
const IAX2_MD5_TAIL = {
  test(tail: string): boolean {
    const open = tail.indexOf("' (");
    if (open === -1 || tail.lastIndexOf("'", open - 1) !== -1) return false;
    const unequal = tail.indexOf(" != ", open + 3);
    return unequal !== -1 && tail.endsWith(")") && tail.length >= unequal + 5;
  },
};
/** chan_iax2.c: `"Host %s did not provide proper plaintext password for '%s'\n"`. */
const IAX2_PLAINTEXT = new RegExp(
  `^Host (${BARE}) did not provide proper plaintext password for '`,
);
/** chan_iax2.c: `"Host %s denied access to register peer '%s'\n"` (peer ACL). */
const IAX2_DENIED = new RegExp(`^Host (${BARE}) denied access to register peer '`);
/** The end of the two messages above: a configured peer name in quotes. */
const QUOTED_NAME_TAIL = /^[^']*'$/;
/** chan_iax2.c: `"No registration for peer '%s' (from %s)\n"`: the caller's peer name comes
 * first, so it is anchored on the right. */
const IAX2_NOREG = new RegExp(`^No registration for peer '.*' \\(from (${BARE})\\)$`, "s");
const IAX2_NOREG_HEAD = /^No registration for peer '/;
/** chan_iax2.c: `"Rejected connect attempt from %s, who was trying to reach '%s@%s'\n"` and
 * `"… from %s, request '%s@%s' does not exist\n"`. */
const IAX2_REJECTED =
  /^Rejected connect attempt from ([^ ,]+), (who was trying to reach|request) '/;
const IAX2_REJECTED_TAIL = {
  "who was trying to reach": /'$/,
  request: /' does not exist$/,
} as const;

/**
 * main/manager.c authenticate(): `"%s failed to authenticate as '%s'\n"`,
 * `"%s tried to authenticate with nonexistent user '%s'\n"` (1.4 – master) and
 * `"%s failed to pass IP ACL as '%s'\n"` (1.6 – master). The address comes first; the user name
 * cannot hold a line feed.
 */
const AMI_AUTH = new RegExp(
  `^(${BARE}) (?:failed to authenticate as|tried to authenticate with nonexistent user|failed to pass IP ACL as) '`,
);

/**
 * res/res_security_log.c (1.8 – master): the fixed head of the four events that mean a failed
 * login. `EventTV` is `sec-usec` in 1.8/11 and ISO 8601 from 12.
 */
const SECURITY_EVENTS = [
  "FailedACL",
  "InvalidAccountID",
  "ChallengeResponseFailed",
  "InvalidPassword",
] as const;
const SECURITY_TV = "(?:\\d+-\\d+|\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d+[+-]\\d{4})";
const SECURITY_HEAD = new RegExp(
  `SecurityEvent="(?:${SECURITY_EVENTS.join("|")})",EventTV="${SECURITY_TV}",` +
    `Severity="(?:Error|Informational)",Service="\\w+",EventVersion="\\d+",AccountID="`,
  "y",
);
/**
 * A RemoteAddress value, `IPV4/UDP/a.b.c.d/port` (transport optional), found by the end of its
 * key on purpose: term_strip() stops deleting at the `m` of the real key at the latest, so the
 * real value survives an ESC in the AccountID or SessionID; and values cannot overlap, where a
 * whole `",LocalAddress=…",RemoteAddress=…"` pair forged at the end of a SessionID could end on
 * the first quote of the real pair and hide it from a global search.
 */
const SECURITY_REMOTE_ADDRESS = new RegExp(
  `oteAddress="IPV[46]/(?:[A-Z]{2,4}/)?${BARE}/\\d+"`,
  "y",
);
/** Where each such value starts. */
const REMOTE_ADDRESS_KEY = 'oteAddress="';
const MODULE = '(?:,Module="[\\w.-]*")?';
const SESSION_TV = `(?:,SessionTV="${SECURITY_TV}")?`;
/** What may follow RemoteAddress in a FailedACL event, to the end of the line. */
const FAILED_ACL_TAIL = new RegExp(`^${MODULE}(?:,ACLName="([\\w.-]*)")?${SESSION_TV}$`);
/** … in an InvalidAccountID event. */
const INVALID_ACCOUNT_TAIL = new RegExp(`^${MODULE}${SESSION_TV}$`);
/** The server-written start of an InvalidPassword event's end. */
const INVALID_PASSWORD_HEAD = new RegExp(`^${MODULE}${SESSION_TV}`);

/**
 * Whether `tail`, the rest of the line after a RemoteAddress value, is exactly what Asterisk
 * writes there for `event` (main/security_events.c): server-written values strictly, the caller's
 * (Challenge, Response, …) as anything. The ChallengeResponseFailed and InvalidPassword ends are
 * the patterns `,Challenge=".*",Response=".*",ExpectedResponse=".*"` + Module + SessionTV and
 * Module + SessionTV + `(,Challenge=".*")?(,ReceivedChallenge=".*")?(,ReceivedHash=".*")?`,
 * checked by hand: as regexes they backtrack cubically on a hostile 8 KB line. Returns the ACL
 * name of a FailedACL (or `""`), or null when the tail is not valid.
 */
function securityTail(event: string, tail: string): string | null {
  switch (event) {
    case "FailedACL": {
      const match = FAILED_ACL_TAIL.exec(tail);
      return match ? match[1] ?? "" : null;
    }
    case "InvalidAccountID":
      return INVALID_ACCOUNT_TAIL.test(tail) ? "" : null;
    case "ChallengeResponseFailed": {
      if (!tail.startsWith(',Challenge="')) return null;
      const response = tail.indexOf('",Response="', 12);
      const expected = response === -1 ? -1 : tail.indexOf('",ExpectedResponse="', response + 12);
      return expected !== -1 && tail.length > expected + 20 && tail.endsWith('"') ? "" : null;
    }
    case "InvalidPassword": {
      const rest = tail.slice((INVALID_PASSWORD_HEAD.exec(tail) as RegExpExecArray)[0].length);
      if (rest === "") return "";
      const opens = [',Challenge="', ',ReceivedChallenge="', ',ReceivedHash="'];
      return opens.some((open) => rest.startsWith(open) && rest.length > open.length) &&
          rest.endsWith('"')
        ? ""
        : null;
    }
  }
  return null;
}

/**
 * FreePBX's from-sip-external context, extension `s`: `Log(WARNING,"Rejecting unknown SIP
 * connection from ${CHANNEL(recvip)}")`, written with file `Ext. s` (and, in the [plain] and
 * syslog forms, `:<priority> [in ]@ from-sip-external`). The whole message is this text, so a
 * Log() of some other extension or context whose message merely ends like it is not read; the
 * quotes survive on some versions. JSON records give the message alone.
 */
const DIALPLAN_UNKNOWN_SIP = new RegExp(
  `^(?:s(?::\\d+ (?:in )?@ from-sip-external)?: )?"?Rejecting unknown SIP connection from (${BARE})"?$`,
);

/** One Asterisk message family: the levels that write it, and how to read its body. */
interface Family {
  name: FamilyName;
  /** Levels it is written at. */
  levels: readonly string[];
  /** Reads the message body s[start, end) (a line, or part of the chunk of log the scanner
   * holds; `b` its bytes); null when the body is not this family's. A search must not run past
   * `end`; a fixed text without CR or LF needs no such bound (`hasAt`), as a line ends in one. */
  read: (s: string, b: Uint8Array, start: number, end: number) => Failure | null;
}

/** A failure; the optional fields only when set, so that results compare simply in tests. */
function failure(
  family: FamilyName,
  address: string | null,
  openHead = false,
  tries?: number,
): Failure {
  const result: Failure = { family, address };
  if (openHead) result.openHead = true;
  if (tries !== undefined) result.tries = tries;
  return result;
}

/** Reads a family whose address follows a fixed head; `tail` is the fixed end of the record. */
function readHead(
  family: FamilyName,
  body: string,
  head: RegExp,
  form: AddressForm,
  tail: { test(text: string): boolean } | null,
): Failure | null {
  const match = head.exec(body);
  if (!match) return null;
  const openHead = tail !== null && !tail.test(body.slice(match[0].length));
  return failure(family, normaliseAddress(match[1], form), openHead);
}

/** A family whose address follows a fixed head. */
function headFamily(
  name: FamilyName,
  levels: readonly string[],
  head: RegExp,
  form: AddressForm,
  tail: { test(text: string): boolean } | null,
): Family {
  return {
    name,
    levels,
    read: (s, _b, start, end) => readHead(name, s.slice(start, end), head, form, tail),
  };
}

/** A family anchored on the right end of the line; `head` alone marks an open head. */
function tailFamily(
  name: FamilyName,
  levels: readonly string[],
  pattern: RegExp,
  form: AddressForm,
  head: RegExp | null = null,
): Family {
  return {
    name,
    levels,
    read(s, _b, start, end) {
      const body = s.slice(start, end);
      const match = pattern.exec(body);
      if (match) return failure(name, normaliseAddress(match[1], form));
      return head?.test(body) ? failure(name, null, true) : null;
    },
  };
}

const NOTICE = ["NOTICE"] as const;
/** The level FreePBX writes its dialplan warning at. */
const LOG_LEVELS = ["WARNING"] as const;
/** chan_iax2 raised some of its messages to WARNING in 18.21, 20.6, 21.1 and 22. */
const NOTICE_OR_WARNING = ["NOTICE", "WARNING"] as const;

/** The fixed texts of the chan_sip registration and PJSIP request lines, as bytes (see hasAt). */
const REGISTRATION_FROM = ascii("Registration from '");
const REASON_DASH = ascii("' - ");
const FAILED_FOR = ascii("' failed for '");
const CALLID = ascii("' (callid: ");
const REQUEST_FROM = ascii("Request from '");
const REQUEST = ascii("Request '");
const FROM = ascii("from '");
const MS = ascii(" ms");
const TRIES_IN = ascii(" tries in ");
const AFTER = ascii(" after ");

/**
 * channels/chan_sip.c handle_request_register(), 1.2 – 20.x:
 * `"Registration from '%s' failed for '%s' - %s\n"`. The To header (the caller's) comes first, so
 * the address is read from the right: the last quoted field before a fixed reason. Read by hand
 * with the same meaning, as it is the commonest line under attack:
 * `/^Registration from '.*' failed for '([^']*)' - (?:REASON|…)$/s`. (No reason holds `'`, so the
 * last `'` of the line is the one before the reason.)
 */
const sipRegister: Family = {
  name: "sip-register",
  levels: NOTICE,
  read(s, b, start, end) {
    if (!hasAt(b, start, REGISTRATION_FROM)) return null;
    const toStart = start + REGISTRATION_FROM.length;
    const dash = lastIndexIn(b, CHAR_QUOTE, end - REASON_DASH.length, start);
    if (
      dash < toStart || !hasAt(b, dash, REASON_DASH) ||
      !isSipRegisterReason(b, dash + REASON_DASH.length, end)
    ) {
      return null;
    }
    const addressStart = lastIndexIn(b, CHAR_QUOTE, dash - 1, start) + 1;
    const failedFor = addressStart - FAILED_FOR.length;
    if (failedFor < toStart || !hasAt(b, failedFor, FAILED_FOR)) return null;
    return failure("sip-register", readAddress(s, b, addressStart, dash, "sockaddr"));
  },
};

/** chan_sip.c calls: with an address from 1.8.5, without before. */
const sipCall: Family = {
  name: "sip-call",
  levels: NOTICE,
  read(s, _b, start, end) {
    const body = s.slice(start, end);
    const reading = readHead("sip-call", body, SIP_CALL, "sockaddr", CALL_TAIL);
    if (reading) return reading;
    const old = SIP_CALL_NO_ADDRESS.exec(body);
    if (!old) return null;
    return failure("sip-call", null, !OLD_CALL_TAIL.test(body.slice(old[0].length)));
  },
};

/** res_pjsip_session.c calls, all three generations. */
const pjsipCall: Family = {
  name: "pjsip-call",
  levels: NOTICE,
  read(s, _b, start, end) {
    const body = s.slice(start, end);
    return readHead("pjsip-call", body, PJSIP_CALL, "srcname", CALL_TAIL) ??
      readHead("pjsip-call", body, PJSIP_CALL_TRACE, "srcname", CALL_TAIL);
  },
};

/*
 * The From field of a PJSIP request line, at b[start, end). pjproject prints it as `<uri>` or
 * `"display" <uri>`; the URI never holds a space, `"`, `<` or `>`. A display quoted on the wire
 * keeps its backslash escapes, so its first unescaped `"` ends it; one unquoted on the wire gets
 * quotes added, may hold a bare `"` or end in a backslash, but holds no `:`, `<`, CR or LF. A line
 * can read both ways, so both ends are tried.
 */

/** The end of a From field `<uri>`, or `"display" <uri>` with the display quoted on the wire;
 * -1 if there is no such field at b[start, end). */
function endOfFrom(b: Uint8Array, start: number, end: number): number {
  const first = b[start];
  if (first === 60 /* < */) return endOfUri(b, start, end);
  if (first !== 34 /* " */) return -1;
  let i = start + 1; // to the first unescaped quote
  while (i < end) {
    const c = b[i];
    if (c === 92 /* \ */) i += 2;
    else if (c === 34) break;
    else i++;
  }
  return i < end && b[i + 1] === 32 && b[i + 2] === 60 ? endOfUri(b, i + 2, end) : -1;
}

/** The end of a From field `"display" <uri>` whose display was not quoted on the wire
 * (`"[^:<\r\n]*" <uri>`); -1 if there is no such field at b[start, end). */
function endOfUnquotedFrom(b: Uint8Array, start: number, end: number): number {
  if (b[start] !== 34 /* " */) return -1;
  const angle = indexIn(b, CHAR_LESS_THAN, start + 1, end);
  if (angle === -1 || angle < start + 3 || b[angle - 2] !== 34 || b[angle - 1] !== 32) {
    return -1;
  }
  for (let i = start + 1; i < angle - 2; i++) {
    const c = b[i];
    if (c === 58 /* : */ || c === 13 || c === 10) return -1;
  }
  return endOfUri(b, angle, end);
}

/** `<` + `[^ "<>]*` + `>` at b[start, end); returns the index after `>`, or -1. */
function endOfUri(b: Uint8Array, start: number, end: number): number {
  if (b[start] !== 60) return -1;
  for (let i = start + 1; i < end; i++) {
    const c = b[i];
    if (c === 62 /* > */) return i + 1;
    if (c === 32 || c === 34 || c === 60) return -1;
  }
  return -1;
}

/** The address of a PJSIP request line whose From field ends at `fromEnd`: the normalised address
 * (or null), or undefined when the line does not read that way. */
function pjsipAddressAfter(
  s: string,
  b: Uint8Array,
  fromEnd: number,
  end: number,
): string | null | undefined {
  if (fromEnd === -1 || !hasAt(b, fromEnd, FAILED_FOR)) return undefined;
  const addressStart = fromEnd + FAILED_FOR.length;
  const addressEnd = indexIn(b, CHAR_QUOTE, addressStart, end);
  if (addressEnd === -1 || !hasAt(b, addressEnd, CALLID)) {
    return undefined;
  }
  return readAddress(s, b, addressStart, addressEnd, "srcname");
}

/** Where the From field of a PJSIP request line b[start, end) starts, or -1 if the line is not
 * one: `Request from '` (P1) or `Request '<method>' from '`. */
function pjsipFromStart(b: Uint8Array, start: number, end: number): number {
  if (hasAt(b, start, REQUEST_FROM)) return start + REQUEST_FROM.length;
  if (!hasAt(b, start, REQUEST)) return -1;
  const method = start + REQUEST.length;
  const space = indexIn(b, CHAR_SPACE, method, end);
  if (
    space === -1 || space < method + 2 || b[space - 1] !== 39 || !hasAt(b, space + 1, FROM)
  ) {
    return -1;
  }
  for (let i = method; i < space - 1; i++) if (METHOD_CHARS[b[i]] !== 1) return -1;
  return space + 1 + FROM.length;
}

/** N of the fixed end ` after N tries in X.Y ms` (`/ after (\d+) tries in \d+\.\d+ ms$/`) that
 * a request line s[start, end) has when its endpoint uses identify_by=auth_username (13.10+), or
 * -1. Read from the right: what follows its ` after ` holds no other. */
function pjsipTries(s: string, b: Uint8Array, start: number, end: number): number {
  const ms = end - MS.length;
  if (ms < start || !hasAt(b, ms, MS)) return -1;
  const fraction = digitsStart(b, start, ms);
  if (fraction === ms || b[fraction - 1] !== 46 /* . */) return -1;
  const whole = digitsStart(b, start, fraction - 1);
  const triesIn = whole - TRIES_IN.length;
  if (whole === fraction - 1 || triesIn < start || !hasAt(b, triesIn, TRIES_IN)) return -1;
  const tries = digitsStart(b, start, triesIn);
  if (
    tries === triesIn || tries - AFTER.length <= start || !hasAt(b, tries - AFTER.length, AFTER)
  ) {
    return -1;
  }
  return Number(s.slice(tries, triesIn));
}

/** The start of the run of digits that ends at `end` (not before `start`). */
function digitsStart(b: Uint8Array, start: number, end: number): number {
  let i = end;
  while (i > start && isDigit(b[i - 1])) i--;
  return i;
}

/**
 * res/res_pjsip/pjsip_distributor.c, P1 (12.0 – 13.9): `"Request from '%s' failed for '%s:%d'
 * (callid: %s) - No matching endpoint found\n"`; P2 (13.10 – 16.0.x, `src_name:port`) and P3
 * (13.24+, 15.7+, 16.1+ – master, `[v6]:port`): `"Request '%s' from '%s' failed for '%s'
 * (callid: %s) - %s"`, optionally `" after %u tries in %.3f ms"`. The From display name before
 * the address and the Call-ID after it are both the caller's, so neither end is safe: the From
 * field is parsed strictly from the left, and every reason is a failure.
 */
const pjsipRequest: Family = {
  name: "pjsip-request",
  levels: NOTICE,
  read(s, b, start, end) {
    const from = pjsipFromStart(b, start, end);
    if (from === -1) return null;
    const quotedEnd = endOfFrom(b, from, end);
    const unquotedEnd = endOfUnquotedFrom(b, from, end);
    const quoted = pjsipAddressAfter(s, b, quotedEnd, end);
    const unquoted = unquotedEnd === quotedEnd
      ? undefined
      : pjsipAddressAfter(s, b, unquotedEnd, end);
    // A display name ending in a backslash reads two ways, with the Call-ID supplying the second.
    if (quoted !== undefined && unquoted !== undefined && quoted !== unquoted) {
      return { family: "pjsip-request", address: null, ambiguous: true };
    }
    const address = quoted !== undefined ? quoted : unquoted;
    if (address === undefined) return null;
    const tries = pjsipTries(s, b, start, end);
    return failure("pjsip-request", address, false, tries === -1 ? undefined : tries);
  },
};

/**
 * res_security_log.c events. The AccountID and SessionID before the addresses and the
 * challenge values after them can be the caller's, so every RemoteAddress value is a candidate;
 * one counts only when a SessionID comes before it and the rest of the line is exactly what
 * Asterisk writes after RemoteAddress for that event. All surviving candidates must agree, or the
 * line is ambiguous and counts nothing.
 */
const securityEvent: Family = {
  name: "security-event",
  levels: ["SECURITY"],
  read(s, b, start, end) {
    // The head is matched in place (sticky, it cannot match past a line's end; and without
    // captures: on a 32 KB chunk of log a match with them costs about three times one without).
    SECURITY_HEAD.lastIndex = start;
    if (!SECURITY_HEAD.test(s)) return null;
    // The rest in the line alone: a search for a key the line lacks must not run on through the
    // chunk (a log of such lines would be read ten times slower).
    const body = s.slice(start, end);
    const headEnd = SECURITY_HEAD.lastIndex - start;
    const event = body.slice(15, body.indexOf('"', 15)); // after `SecurityEvent="`
    if (!COUNT_CHAN_SIP_SECURITY_EVENTS && body.slice(0, headEnd).includes('",Service="SIP",')) {
      return null;
    }
    const sessionId = body.indexOf('",SessionID="', headEnd - 1);
    let address: string | null | undefined; // undefined until a candidate holds
    let ambiguous = false;
    let values = 0;
    for (let at = body.indexOf(REMOTE_ADDRESS_KEY, headEnd); at !== -1;) {
      SECURITY_REMOTE_ADDRESS.lastIndex = at;
      const valueAt = at;
      const valid = SECURITY_REMOTE_ADDRESS.test(body);
      const valueEnd = valid ? SECURITY_REMOTE_ADDRESS.lastIndex : at + 1; // values do not overlap
      at = body.indexOf(REMOTE_ADDRESS_KEY, valueEnd);
      if (!valid) continue;
      values++;
      if (sessionId === -1 || sessionId + 13 > valueAt) continue;
      const acl = securityTail(event, body.slice(valueEnd));
      if (acl === null) continue;
      if (acl.startsWith("registrar_")) return null;
      // The value ends `/address/port"` (both slashes are in it), and an address holds no `/`.
      const addressEnd = lastIndexIn(b, CHAR_SLASH, start + valueEnd - 2, start);
      const addressStart = lastIndexIn(b, CHAR_SLASH, addressEnd - 1, start) + 1;
      const candidate = readAddress(s, b, addressStart, addressEnd, "bare");
      if (address !== undefined && candidate !== address) ambiguous = true;
      address = candidate;
    }
    if (ambiguous) return { family: "security-event", address: null, ambiguous: true };
    if (address !== undefined) return failure("security-event", address);
    // No RemoteAddress at all: an AccountID cut by a line feed (chan_sip) leaves an open head.
    return failure("security-event", null, values === 0);
  },
};

/** A source file whose messages sipcheck reads. */
interface Source {
  /** `__FILE__` of the writer, as the prefix names it; `Ext.` for dialplan Log() lines. */
  file: string;
  /** Its name's character codes, for {@link watchedFileAt}. */
  name: Uint8Array;
  /** The families it writes, in the order they are tried. */
  families: readonly Family[];
  /** 1 for each character code (0 to 255) a message body can start with, for the cheap test on
   * the hot path (see {@link readLineAt}); null where anything can come first. */
  bodyStarts: Uint8Array | null;
}

/** A source; `bodyStarts` are the characters its bodies can start with, null for any. */
function source(file: string, bodyStarts: string | null, families: Family[]): Source {
  let table = null;
  if (bodyStarts !== null) {
    table = new Uint8Array(256);
    for (let i = 0; i < bodyStarts.length; i++) table[bodyStarts.charCodeAt(i)] = 1;
  }
  return { file, name: ascii(file), families, bodyStarts: table };
}

/** FreePBX's dialplan warning, written by Log() with the file `Ext. <exten>`. */
const DIALPLAN = source("Ext.", null, [
  tailFamily("dialplan-unknown-sip", LOG_LEVELS, DIALPLAN_UNKNOWN_SIP, "bare"),
]);

/** The source files sipcheck reads, and the families each writes. */
const SOURCES: readonly Source[] = [
  source("chan_sip.c", "RCh", [
    sipRegister,
    sipCall,
    tailFamily("sip-hacking-attempt", NOTICE, SIP_HACKING_ATTEMPT, "bare"),
  ]),
  source("res_pjsip/pjsip_distributor.c", "R", [pjsipRequest]),
  source("res_pjsip_session.c", null, [pjsipCall]),
  source("chan_iax2.c", "HNR", [
    headFamily("iax2-auth", NOTICE_OR_WARNING, IAX2_AUTH, "sockaddr", null),
    headFamily("iax2-md5", NOTICE_OR_WARNING, IAX2_MD5, "bare", IAX2_MD5_TAIL),
    headFamily("iax2-plaintext", NOTICE_OR_WARNING, IAX2_PLAINTEXT, "bare", QUOTED_NAME_TAIL),
    headFamily("iax2-denied", NOTICE_OR_WARNING, IAX2_DENIED, "bare", QUOTED_NAME_TAIL),
    tailFamily("iax2-noreg", NOTICE_OR_WARNING, IAX2_NOREG, "bare", IAX2_NOREG_HEAD),
    {
      name: "iax2-rejected",
      levels: NOTICE_OR_WARNING,
      read(s, _b, start, end) {
        const body = s.slice(start, end);
        const match = IAX2_REJECTED.exec(body);
        if (!match) return null;
        const tail = IAX2_REJECTED_TAIL[match[2] as keyof typeof IAX2_REJECTED_TAIL];
        const openHead = !tail.test(body.slice(match[0].length));
        return failure("iax2-rejected", normaliseAddress(match[1], "sockaddr"), openHead);
      },
    },
  ]),
  source("manager.c", "0123456789abcdefABCDEF:", [
    headFamily("ami-auth", NOTICE, AMI_AUTH, "bare", null),
  ]),
  source("res_security_log.c", "S", [securityEvent]),
];

/** SOURCES by the length of their names, for {@link watchedFileAt}. */
const SOURCES_BY_LENGTH: Source[][] = [];
for (const source of SOURCES) (SOURCES_BY_LENGTH[source.file.length] ??= []).push(source);

/**
 * LOCATED_PREFIX with a level and a file sipcheck reads: a line it does not match cannot hold a
 * failure in those forms (the cheap test of {@link mayHoldFailure}).
 */
const LOCATED_WATCHED = locatedPrefix(
  `(?:${LEVELS.join("|")})`,
  `(?:${SOURCES.map(({ file }) => file.replaceAll(".", "\\.")).join("|")})`,
);

/** The source a JSON record's file names, or null. */
function sourceNamed(file: string): Source | null {
  if (file.startsWith("Ext. ") || file === DIALPLAN.file) return DIALPLAN;
  return SOURCES.find((source) => source.file === file) ?? null;
}

/** True if `family` is written at `level` (`levels.includes`, without a call). */
function writtenAt(family: Family, level: string): boolean {
  for (const written of family.levels) if (written === level) return true;
  return false;
}

/** Reads the body s[start, end) of a record once its level and source file are known. */
function readBody(
  level: string,
  source: Source,
  s: string,
  b: Uint8Array,
  start: number,
  end: number,
  fromJson: boolean,
): Failure | null {
  for (const family of source.families) {
    if (!writtenAt(family, level)) continue;
    const result = family.read(s, b, start, end);
    if (!result) continue;
    // A JSON record is one line whatever it holds: nothing after it can be forged.
    if (fromJson) delete result.openHead;
    return result;
  }
  return null;
}

/** Asterisk's JSON formatter (14.0+): one object per line, `logmsg.message` ends in `\n`. */
function parseJsonLine(line: string): Failure | null {
  let record;
  try {
    record = JSON.parse(line);
  } catch {
    return null;
  }
  const logmsg = record?.logmsg;
  const file = logmsg?.location?.filename;
  const { level, message } = logmsg ?? {};
  if (typeof file !== "string" || typeof level !== "string" || typeof message !== "string") {
    return null;
  }
  const source = sourceNamed(file);
  if (source === null) return null;
  const body = (message.endsWith("\n") ? message.slice(0, -1) : message)
    .replace(JSON_LINE_BREAKS, "\ufffd");
  return readBody(level, source, body, lineBytes(body), 0, body.length, true);
}

/**
 * Reads one physical log line (without its line feed) and returns the failure it records, or null
 * when it records none. The line must start with a complete Asterisk prefix; the family is chosen
 * by level and source file; the address is read from the side of the message Asterisk writes.
 */
export function parseLine(line: string): Failure | null {
  return readLine(line, lineBytes(line));
}

/** {@link parseLine} of `line`, whose bytes (see {@link textBytes}) are `b`. */
function readLine(line: string, b: Uint8Array): Failure | null {
  if (line.endsWith("\r")) {
    line = line.slice(0, -1);
    b = b.subarray(0, line.length);
  }
  if (line.charCodeAt(0) === 123 /* { */) return parseJsonLine(line);
  let prefix = readPrefix(line, b);
  if (!prefix && line.includes("\x1b")) {
    // Console output copied to the journal keeps its colours; only there are they stripped.
    line = line.replace(SGR, "");
    b = lineBytes(line);
    prefix = readPrefix(line, b);
  }
  if (!prefix || prefix === IRRELEVANT) return null;
  return readBody(prefix.level, prefix.source, line, b, prefix.body, line.length, false);
}

/**
 * The hot path's parseLine, for the line s[start, end) of a chunk (bytes `b`): the same reading,
 * with cheap tests first so that the lines that cannot hold a failure, most of a log, cost next to
 * nothing.
 */
function readLineAt(s: string, b: Uint8Array, start: number, end: number): Failure | null {
  if (b[end - 1] === 13 /* CR */) end--;
  const prefix = readFilePrefix(s, b, start, end);
  if (prefix === IRRELEVANT) return null;
  if (prefix) {
    const starts = prefix.source.bodyStarts;
    if (starts !== null && starts[b[prefix.body]] !== 1) return null;
    return readBody(prefix.level, prefix.source, s, b, prefix.body, end, false);
  }
  const line = s.slice(start, end);
  return mayHoldFailure(line, b, start) ? readLine(line, b.subarray(start, end)) : null;
}
// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

/** What a scan keeps per address: a count, or the last `after N tries` value. */
export type Counts = AddressCounts;

/** What {@link AddressCounts.snapshot} gives, to send to another thread (its arrays can be
 * transferred, and {@link AddressCounts.from} adopts them). */
export interface CountsSnapshot {
  keys: Uint32Array;
  values: Uint32Array | Float64Array;
  kinds: Uint8Array;
  words: Uint32Array;
  others: [number, string][];
}

const IPV4 = 0;
const IPV6 = 1;
const OTHER = 2;
const DELETED = 3;

/** The multiplier of Fibonacci hashing: 2^32 divided by the golden ratio. */
const GOLDEN = 0x9e3779b1;

/**
 * The hash of an address's 32-bit words (IPv4: `w0` alone), whose top bits pick its slot in
 * {@link AddressCounts}: the top bits of a product depend on all of the key, its low bits only
 * on the key's low bits, and addresses often differ only in their high bits (`a.b.0.0`: with the
 * low bits, 65,536 of them took 11 s to count instead of 0.1 s).
 */
export function addressHash(ipv6: boolean, w0: number, w1: number, w2: number, w3: number): number {
  let hash = Math.imul(w0, GOLDEN);
  if (ipv6) {
    hash = Math.imul(hash ^ w1, GOLDEN);
    hash = Math.imul(hash ^ w2, GOLDEN);
    hash = Math.imul(hash ^ w3, GOLDEN);
  }
  return hash >>> 0;
}

/**
 * `array` with room for `length` elements, the first ones kept and the rest zero (an array of the
 * same type). Its buffer is moved where it can be (`ArrayBuffer.prototype.transfer`), so the old
 * one is freed at once: a replaced array of a table that has lived long would otherwise be kept
 * until the next full collection, and a million addresses would leave tens of MB of them behind.
 */
function resized<T extends Uint8Array | Uint32Array | Float64Array>(array: T, length: number): T {
  const bytes = length * array.BYTES_PER_ELEMENT;
  const source = array.buffer;
  let buffer: ArrayBuffer;
  if (source instanceof ArrayBuffer && array.byteOffset === 0) buffer = source.transfer(bytes);
  else {
    buffer = new ArrayBuffer(bytes);
    new Uint8Array(buffer).set(
      new Uint8Array(source, array.byteOffset, Math.min(array.byteLength, bytes)),
    );
  }
  return new (array.constructor as new (buffer: ArrayBuffer) => T)(buffer);
}

/** Frees the memory of `array`, which is not used any more, at once (see {@link resized}). */
function free(array: ArrayBufferView): void {
  if (array.buffer instanceof ArrayBuffer && !array.buffer.detached) array.buffer.transfer(0);
}

/** Frees the arrays of a snapshot that has been merged and is not used any more (a worker's part
 * of a million addresses holds 20 MB of them); counts in a table are left to the collector. */
function release(counts: AddressCounts | CountsSnapshot): void {
  if (counts instanceof AddressCounts) return;
  for (const array of [counts.keys, counts.values, counts.kinds, counts.words]) free(array);
}

/**
 * Numbers per address in little memory, since a million attacking addresses must not take a
 * gigabyte: addresses in canonical form live as numbers in typed arrays (IPv4 one 32-bit word,
 * IPv6 four, counts as 32-bit words), 9 bytes an address plus 16 for IPv6 in dense entries in
 * first-seen order (room for up to twice as many) and 4 to 11 in an open-addressing hash table
 * over them; any other text in a Map. It behaves like a
 * `Map<string, number>` in the ways sipcheck uses one, iterating in first-seen order.
 */
export class AddressCounts {
  #keys: Uint32Array = new Uint32Array(256); // IPv4: the address; IPv6: its number in #words
  // Counts fit 32 bits (4 bytes an address less than a float); a value that does not turns
  // them into floats (see #store).
  #values: Uint32Array | Float64Array = new Uint32Array(256);
  #kinds: Uint8Array = new Uint8Array(256); // IPV4, IPV6, OTHER or DELETED
  #used = 0; // entries handed out
  #live = 0; // entries not deleted
  #words: Uint32Array = new Uint32Array(256); // IPv6 addresses, four 32-bit words each
  #sixes = 0; // IPv6 addresses in #words
  #others = new Map<string, number>(); // other text → entry
  #otherText = new Map<number, string>(); // entry → other text
  #slots = new Int32Array(512); // entry + 1, 0 for empty, -1 for a deleted one
  #shift = 23; // 32 − log2(#slots.length)
  #filled = 0; // slots not empty
  // The address being looked up (see #read): its kind and words.
  #kind = OTHER;
  #w0 = 0;
  #w1 = 0;
  #w2 = 0;
  #w3 = 0;

  /** Entries (of any kind) that are not deleted. */
  get size(): number {
    return this.#live;
  }

  /** Reads `address` as the one being looked up; false when it is in neither canonical form. */
  #read(address: string): boolean {
    if (!rememberCanonical(address)) {
      this.#kind = OTHER;
      return false;
    }
    const last = lastAddress;
    this.#kind = last.ipv6 ? IPV6 : IPV4;
    this.#w0 = last.w0;
    this.#w1 = last.w1;
    this.#w2 = last.w2;
    this.#w3 = last.w3;
    return true;
  }

  /** Makes the IPv4 or IPv6 entry `key` of `kind` (words in `words`) the one being looked up. */
  #loadFrom(kind: number, key: number, words: Uint32Array): void {
    this.#kind = kind;
    if (kind === IPV4) this.#w0 = key;
    else {
      this.#w0 = words[key * 4];
      this.#w1 = words[key * 4 + 1];
      this.#w2 = words[key * 4 + 2];
      this.#w3 = words[key * 4 + 3];
    }
  }

  /** The slot holding the address being looked up, or where it would go (−1 − slot). */
  #slotOf(): number {
    const hash = addressHash(this.#kind === IPV6, this.#w0, this.#w1, this.#w2, this.#w3);
    const mask = this.#slots.length - 1;
    let free = -1;
    for (let slot = hash >>> this.#shift;; slot = (slot + 1) & mask) {
      const entry = this.#slots[slot];
      if (entry === 0) return -1 - (free === -1 ? slot : free);
      if (entry === -1) {
        if (free === -1) free = slot;
      } else if (this.#isLookedUp(entry - 1)) return slot;
    }
  }

  /** True when entry `entry` holds the address being looked up. */
  #isLookedUp(entry: number): boolean {
    const kind = this.#kinds[entry];
    if (kind !== this.#kind) return false;
    if (kind === IPV4) return this.#keys[entry] === this.#w0;
    const at = this.#keys[entry] * 4;
    const words = this.#words;
    return words[at] === this.#w0 && words[at + 1] === this.#w1 && words[at + 2] === this.#w2 &&
      words[at + 3] === this.#w3;
  }

  /** The entry of `address`, or -1. */
  #entryOf(address: string): number {
    if (!this.#read(address)) return this.#others.get(address) ?? -1;
    const slot = this.#slotOf();
    return slot < 0 ? -1 : this.#slots[slot] - 1;
  }

  get(address: string): number | undefined {
    const entry = this.#entryOf(address);
    return entry === -1 ? undefined : this.#values[entry];
  }

  has(address: string): boolean {
    return this.#entryOf(address) !== -1;
  }

  set(address: string, value: number): this {
    this.#put(address, value, false);
    return this;
  }

  /** Adds `step` to the value of `address` (0 if it has none): one lookup instead of two. */
  add(address: string, step: number): void {
    this.#put(address, step, true);
  }

  #put(address: string, value: number, add: boolean): void {
    if (this.#read(address)) return this.#putLookedUp(value, add);
    const entry = this.#others.get(address);
    if (entry !== undefined) this.#store(entry, add ? this.#values[entry] + value : value);
    else {
      const added = this.#append(value);
      this.#others.set(address, added);
      this.#otherText.set(added, address);
    }
  }

  /** Sets (or adds to) the value of the address being looked up. */
  #putLookedUp(value: number, add: boolean): void {
    let slot = this.#slotOf();
    if (slot >= 0) {
      const entry = this.#slots[slot] - 1;
      this.#store(entry, add ? this.#values[entry] + value : value);
      return;
    }
    if ((this.#filled + 1) * 4 > this.#slots.length * 3) {
      this.#rehash();
      slot = this.#slotOf();
    }
    slot = -1 - slot;
    if (this.#slots[slot] === 0) this.#filled++;
    this.#slots[slot] = this.#append(value) + 1;
  }

  /** Sets the value of entry `entry`; one that is not a 32-bit count turns the values into
   * floats first. */
  #store(entry: number, value: number): void {
    if (value >>> 0 !== value && this.#values instanceof Uint32Array) {
      this.#values = Float64Array.from(this.#values);
    }
    this.#values[entry] = value;
  }

  /** Adds every value of `other` (counts, or a {@link snapshot} of them) to this one's
   * (`"add"`), or sets them (`"set"`), by number: joining two tallies of a million addresses
   * makes no strings for them, and a snapshot needs no hash table. */
  merge(other: AddressCounts | CountsSnapshot, how: "add" | "set"): void {
    const { keys, values, kinds, words } = other instanceof AddressCounts ? other.#view() : other;
    const texts = other instanceof AddressCounts ? other.#otherText : new Map(other.others);
    for (let entry = 0; entry < kinds.length; entry++) {
      const kind = kinds[entry];
      if (kind === IPV4 || kind === IPV6) {
        this.#loadFrom(kind, keys[entry], words);
        this.#putLookedUp(values[entry], how === "add");
      } else if (kind === OTHER) this.#put(texts.get(entry)!, values[entry], how === "add");
    }
  }

  delete(address: string): boolean {
    let entry: number;
    if (!this.#read(address)) {
      entry = this.#others.get(address) ?? -1;
      if (entry === -1) return false;
      this.#others.delete(address);
      this.#otherText.delete(entry);
    } else {
      const slot = this.#slotOf();
      if (slot < 0) return false;
      entry = this.#slots[slot] - 1;
      this.#slots[slot] = -1;
    }
    this.#kinds[entry] = DELETED;
    this.#live--;
    if (this.#used > 1024 && this.#live * 2 < this.#used) this.#compact();
    return true;
  }

  clear(): void {
    this.#compactTo([]);
  }

  /** Adds an entry for the address being looked up (its text, if OTHER, is the caller's to
   * keep); returns its number. */
  #append(value: number): number {
    if (this.#used === this.#keys.length) this.#grow();
    const entry = this.#used++;
    const kind = this.#kind;
    let key = 0;
    if (kind === IPV4) key = this.#w0;
    else if (kind === IPV6) {
      if (this.#sixes * 4 === this.#words.length) {
        this.#words = resized(this.#words, Math.max(256, this.#sixes * 8));
      }
      const at = this.#sixes * 4;
      this.#words[at] = this.#w0;
      this.#words[at + 1] = this.#w1;
      this.#words[at + 2] = this.#w2;
      this.#words[at + 3] = this.#w3;
      key = this.#sixes++;
    }
    this.#keys[entry] = key;
    this.#store(entry, value);
    this.#kinds[entry] = kind;
    this.#live++;
    return entry;
  }

  #grow(): void {
    const capacity = Math.max(256, this.#used * 2);
    this.#keys = resized(this.#keys, capacity);
    this.#values = resized(this.#values, capacity);
    this.#kinds = resized(this.#kinds, capacity);
  }

  /** A table of at least twice the live entries, without deleted slots (the address being
   * looked up is kept). */
  #rehash(): void {
    const [kind, w0, w1, w2, w3] = [this.#kind, this.#w0, this.#w1, this.#w2, this.#w3];
    let size = 512;
    while (size < (this.#live + 1) * 2) size *= 2;
    free(this.#slots);
    this.#slots = new Int32Array(size);
    this.#shift = 32 - Math.log2(size);
    this.#filled = 0;
    for (let entry = 0; entry < this.#used; entry++) {
      const entryKind = this.#kinds[entry];
      if (entryKind !== IPV4 && entryKind !== IPV6) continue;
      this.#loadFrom(entryKind, this.#keys[entry], this.#words);
      this.#slots[-1 - this.#slotOf()] = entry + 1;
      this.#filled++;
    }
    [this.#kind, this.#w0, this.#w1, this.#w2, this.#w3] = [kind, w0, w1, w2, w3];
  }

  /** Drops deleted entries, keeping the order of the others. */
  #compact(): void {
    this.#compactTo([...this.entries()]);
  }

  #compactTo(entries: [string, number][]): void {
    this.#keys = new Uint32Array(Math.max(256, entries.length * 2));
    this.#values = new Uint32Array(this.#keys.length);
    this.#kinds = new Uint8Array(this.#keys.length);
    this.#used = this.#live = 0;
    this.#words = new Uint32Array(256);
    this.#sixes = 0;
    this.#others.clear();
    this.#otherText.clear();
    this.#slots = new Int32Array(512);
    this.#shift = 23;
    this.#filled = 0;
    for (const [address, value] of entries) this.set(address, value);
  }

  /** The text of entry `entry` (not deleted). */
  #textOf(entry: number): string {
    const kind = this.#kinds[entry];
    const key = this.#keys[entry];
    if (kind === IPV4) return ipv4Text(key);
    if (kind === OTHER) return this.#otherText.get(entry)!;
    const groups: number[] = [];
    for (const word of this.#words.subarray(key * 4, key * 4 + 4)) {
      groups.push(word >>> 16, word & 0xffff);
    }
    return ipv6Text(groups);
  }

  *entries(): IterableIterator<[string, number]> {
    for (let entry = 0; entry < this.#used; entry++) {
      if (this.#kinds[entry] !== DELETED) yield [this.#textOf(entry), this.#values[entry]];
    }
  }

  *keys(): IterableIterator<string> {
    for (const [address] of this.entries()) yield address;
  }

  *values(): IterableIterator<number> {
    for (let entry = 0; entry < this.#used; entry++) {
      if (this.#kinds[entry] !== DELETED) yield this.#values[entry];
    }
  }

  [Symbol.iterator](): IterableIterator<[string, number]> {
    return this.entries();
  }

  /** The entries whose value is at least `least`, in first-seen order; only their texts are made. */
  *atLeast(least: number): IterableIterator<[string, number]> {
    for (let entry = 0; entry < this.#used; entry++) {
      if (this.#kinds[entry] === DELETED || !(this.#values[entry] >= least)) continue;
      yield [this.#textOf(entry), this.#values[entry]];
    }
  }

  /**
   * The entries by value, highest first (first seen first among equals), each address's text
   * made only when it is reached.
   */
  *byValue(): IterableIterator<[string, number]> {
    for (const entry of this.entriesByValue()) {
      if (this.#kinds[entry] === DELETED) continue; // deleted meanwhile
      yield [this.#textOf(entry), this.#values[entry]];
    }
  }

  /**
   * The numbers of the entries by value, highest first (first seen first among equals), for
   * {@link valueAt}, {@link textAt} and {@link writeAddressAt} (until the next change). A counting
   * sort, in one array of entry numbers: counts that add up to F take at most √(2F) distinct
   * values, so even a million addresses sort in a few passes and no temporary copy.
   */
  entriesByValue(): Uint32Array {
    const next = new Map<number, number>(); // value → how many have it, then → its next place
    for (let entry = 0; entry < this.#used; entry++) {
      if (this.#kinds[entry] === DELETED) continue;
      const value = this.#values[entry];
      next.set(value, (next.get(value) ?? 0) + 1);
    }
    let place = 0;
    for (const value of [...next.keys()].sort((a, b) => b - a)) {
      const count = next.get(value)!;
      next.set(value, place);
      place += count;
    }
    const order = new Uint32Array(place);
    for (let entry = 0; entry < this.#used; entry++) {
      if (this.#kinds[entry] === DELETED) continue;
      const value = this.#values[entry];
      const at = next.get(value)!;
      order[at] = entry;
      next.set(value, at + 1);
    }
    return order;
  }

  /** The value of entry number `entry` (see {@link entriesByValue}). */
  valueAt(entry: number): number {
    return this.#values[entry];
  }

  /** The address (or other text) of entry number `entry` (see {@link entriesByValue}). */
  textAt(entry: number): string {
    return this.#textOf(entry);
  }

  /**
   * Writes the IPv4 or IPv6 address of entry number `entry` (see {@link entriesByValue}) as ASCII
   * into `bytes` at `at`, without making its text, and returns where it ends; -1 for other text,
   * which {@link textAt} gives. `bytes` needs room for 39 bytes.
   */
  writeAddressAt(entry: number, bytes: Uint8Array, at: number): number {
    const kind = this.#kinds[entry];
    if (kind === IPV6) {
      const g = WRITTEN_GROUPS;
      const words = this.#words;
      for (let k = 0, w = this.#keys[entry] * 4; k < 8; k += 2, w++) {
        g[k] = words[w] >>> 16;
        g[k + 1] = words[w] & 0xffff;
      }
      return writeIPv6(g, bytes, at);
    }
    if (kind !== IPV4) return -1;
    const key = this.#keys[entry];
    for (let shift = 24; shift >= 0; shift -= 8) {
      if (shift !== 24) bytes[at++] = 46; // .
      at = writeDigits((key >>> shift) & 255, bytes, at);
    }
    return at;
  }

  /** The arrays in use, without a copy. */
  #view(): Omit<CountsSnapshot, "others"> {
    return {
      keys: this.#keys.subarray(0, this.#used),
      values: this.#values.subarray(0, this.#used),
      kinds: this.#kinds.subarray(0, this.#used),
      words: this.#words.subarray(0, this.#sixes * 4),
    };
  }

  /** The contents as typed arrays, to send to another thread. */
  snapshot(): CountsSnapshot {
    return {
      keys: this.#keys.slice(0, this.#used),
      values: this.#values.slice(0, this.#used),
      kinds: this.#kinds.slice(0, this.#used),
      words: this.#words.slice(0, this.#sixes * 4),
      others: [...this.#otherText],
    };
  }

  /** The contents, handed over without a copy (to send to another thread): these counts are
   * empty afterwards. */
  handOver(): CountsSnapshot {
    const contents = {
      keys: this.#keys.subarray(0, this.#used),
      values: this.#values.subarray(0, this.#used),
      kinds: this.#kinds.subarray(0, this.#used),
      words: this.#words.subarray(0, this.#sixes * 4),
      others: [...this.#otherText],
    };
    this.clear();
    return contents;
  }

  /** Counts from a {@link snapshot}, whose arrays it takes over (only the hash table is new). */
  static from(snapshot: CountsSnapshot): AddressCounts {
    const counts = new AddressCounts();
    counts.#keys = snapshot.keys;
    counts.#values = snapshot.values;
    counts.#kinds = snapshot.kinds;
    counts.#words = snapshot.words;
    counts.#used = snapshot.kinds.length;
    counts.#sixes = snapshot.words.length / 4;
    counts.#live = snapshot.kinds.reduce((live, kind) => kind === DELETED ? live : live + 1, 0);
    for (const [entry, text] of snapshot.others) {
      counts.#otherText.set(entry, text);
      counts.#others.set(text, entry);
    }
    counts.#rehash();
    return counts;
  }
}

/** An empty tally. */
export function newTally(): Tally {
  return {
    counts: new AddressCounts(),
    lastTries: new AddressCounts(),
    lines: 0,
    failures: 0,
    longLines: 0,
    openHeads: 0,
    suppressed: 0,
    ambiguous: 0,
  };
}

/**
 * A copy of a string that does not keep the text it was cut from alive (V8 slices point into
 * their parent, and a tally of a million addresses must not hold a gigabyte of log).
 */
function detach(text: string): string {
  return (" " + text).slice(1);
}

/**
 * Counts one failure and returns how many it counted: a PJSIP `after N tries` line stands for
 * the requests since the previous such line from that address (N − last, or N when a new window
 * starts), at most {@link TRIES_STEP_MAX}; any other line for one.
 */
export function addFailure(tally: Tally, address: string, tries?: number): number {
  const step = tries === undefined ? 1 : triesStep(tries, tally.lastTries.get(address) ?? 0);
  tally.counts.add(address, step);
  if (tries !== undefined) tally.lastTries.set(address, tries);
  tally.failures += step;
  return step;
}

/** How much a PJSIP `after N tries` line counts when the previous one from its address said `last`
 * (0 for none). */
function triesStep(tries: number, last: number): number {
  return Math.max(1, Math.min(tries > last ? tries - last : tries, TRIES_STEP_MAX));
}

/** A part's tally as a worker thread sends it: the counts as typed arrays (or not). */
export type PartTally = Omit<Tally, "counts" | "lastTries"> & {
  counts: AddressCounts | CountsSnapshot;
  lastTries: AddressCounts | CountsSnapshot;
};

/**
 * Adds the tally of the next part of a log (counted into an empty tally) to the tally of the parts
 * before it, exactly as if one scanner had read them all. The first `after N tries` line of each
 * address in the part (`firstTries`, see {@link ScanPart}) was counted as if nothing came before
 * it; it is counted again against the last such line before the part.
 */
export function joinTally(
  into: Tally,
  next: PartTally,
  firstTries: AddressCounts | CountsSnapshot,
): void {
  const corrections: [string, number][] = [];
  const first = firstTries instanceof AddressCounts ? firstTries : AddressCounts.from(firstTries);
  for (const [address, tries] of first) {
    const last = into.lastTries.get(address);
    if (last !== undefined) {
      corrections.push([address, triesStep(tries, last) - triesStep(tries, 0)]);
    }
  }
  into.counts.merge(next.counts, "add");
  into.lastTries.merge(next.lastTries, "set");
  for (const [address, correction] of corrections) {
    into.counts.add(address, correction);
    into.failures += correction;
  }
  into.lines += next.lines;
  into.failures += next.failures;
  into.longLines += next.longLines;
  into.openHeads += next.openHeads;
  into.suppressed += next.suppressed;
  into.ambiguous += next.ambiguous;
}

/**
 * The cheap test for lines in the other formats (syslog, journal, `[plain]`, JSON): could the
 * line hold a failure? Its prefix has to name a level and a file sipcheck reads (in JSON, a
 * `"filename":"…"` of a watched file or `Ext. `), or it holds colours that only parseLine strips.
 * Lines that pass are parsed in full. The line's bytes are b[at, at + line.length) (no new view
 * of them for a line that fails: most lines here do, and a view costs more than the test).
 */
function mayHoldFailure(line: string, b: Uint8Array, at: number): boolean {
  if (line.charCodeAt(0) === 123 /* { */) {
    const key = line.indexOf('"filename":"');
    const close = key === -1 ? -1 : line.indexOf('"', key + 12);
    return close !== -1 &&
      (watchedFileAt(b, at + key + 12, at + close) !== null || hasAt(b, at + key + 12, EXT));
  }
  return LOCATED_WATCHED.test(line) || line.includes("\x1b");
}

/**
 * True when `version` (`major.minor.patch`, as in `Deno.version.deno`, where a canary build adds
 * `+commit`) is older than `than`.
 */
export function isVersionBefore(version: string, than: string): boolean {
  const a = version.split(".", 3).map((part) => parseInt(part, 10));
  const b = than.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] || 0) !== b[i]) return (a[i] || 0) < b[i];
  return false;
}

/** Decodes bytes[from, to) of a log as text, one character per byte (see {@link logDecoder}). */
export type LogDecoder = (bytes: Buffer, from: number, to: number) => string;

/**
 * How a scanner decodes a log: as Latin-1, the byte's code as the character's, by Buffer, the
 * fastest there is (0.05 ns a byte here). Deno before 2.8.2 (`oldDeno`) decodes Latin-1 in
 * JavaScript at 4 ns a byte, which made a whole scan 3 to 4 times as long; there a TextDecoder for
 * windows-1252 is used instead (0.5 ns a byte). It also gives one character per byte, the same
 * as Latin-1 but for the bytes 0x80 to 0x9F, which it reads as other characters above 127: the
 * readers look only for ASCII, so they find the same in both.
 */
export function logDecoder(oldDeno: boolean): LogDecoder {
  if (!oldDeno) return (bytes, from, to) => bytes.toString("latin1", from, to);
  const decoder = new TextDecoder("windows-1252");
  return (bytes, from, to) => decoder.decode(bytes.subarray(from, to));
}

/** {@link logDecoder} for the runtime this runs on. */
const decodeLog = logDecoder(OLD_DENO);

/** A log reader that counts failures as bytes arrive, in bounded memory. */
export interface Scanner {
  /** Feeds the next bytes of the log; every complete line in them is read at once (an incomplete
   * last line waits for the rest). */
  write(bytes: Uint8Array): void;
  /** Reads up to a chunk (at most `limit` bytes) straight from a file descriptor, at `position`
   * or where the file stands; returns the bytes read (0 at the end). */
  readFrom(fd: number, position?: number, limit?: number): number;
  /** Ends the log: a last line without a line feed is read too. */
  end(): void;
}

/**
 * Where a scanner starts in a log that is read in several parts at once: lines that start before
 * `countFrom` belong to the part before, and are read only for their open heads (whose windows
 * reach into this part). The scanner's first byte is at `offset`, which may be inside a line.
 */
export interface ScanPart {
  offset: number;
  countFrom: number;
  /** Filled with the N of the first `after N tries` line counted per address, to be counted
   * again when the parts are joined (see {@link joinTally}): numbers, not strings, since a part
   * may hold a hundred thousand of them and a worker thread sends them over. */
  firstTries: AddressCounts;
}

/** Bytes before a part that its scanner reads for open heads: a window and a longest line. */
export const PART_LOOKBACK = OPEN_HEAD_WINDOW + MAX_LINE + 2;

/**
 * Creates a scanner that adds what it reads to `tally`. Lines are split on LF only and decoded
 * one character per byte (as Latin-1, see {@link logDecoder}; no byte sequence can stop a scan);
 * lines over {@link MAX_LINE} bytes are skipped without being held in memory. Every open head
 * opens a window of {@link OPEN_HEAD_WINDOW} bytes after it; a failure line that starts inside a
 * window is not counted unless every window it is in belongs to a head with the same address (a
 * caller can only frame itself). Whether a line is counted depends only on the 16 KB before it,
 * so a log can be read in parts at once with the same result (see {@link ScanPart}).
 */
export function createScanner(
  tally: Tally,
  onFailure?: (failure: Failure, counted: number) => void,
  part?: ScanPart,
  decode: LogDecoder = decodeLog,
): Scanner {
  const buffer = Buffer.allocUnsafe(READ_SIZE + MAX_LINE + 1);
  // The same bytes as a plain Uint8Array, as the readers get them from everywhere else.
  const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length);
  let used = 0; // bytes in buffer
  let offset = part?.offset ?? 0; // log offset of buffer[0]
  const countFrom = part?.countFrom ?? 0;
  // Inside a line longer than MAX_LINE (or, at a part's first byte, a line of the part before).
  let skipping = offset > 0 && offset < countFrom;
  let skippingCounts = !skipping;
  /** Open heads' windows, oldest first: where each ends, and the head's address. */
  const windows: { end: number; address: string | null }[] = [];

  /** True when a failure line at `lineStart` naming `address` lies in someone else's window. */
  function inForeignWindow(lineStart: number, address: string | null): boolean {
    while (windows.length > 0 && windows[0].end <= lineStart) windows.shift();
    return windows.some((window) => window.address === null || window.address !== address);
  }

  function record(failure: Failure, lineStart: number, lineEnd: number): void {
    const counting = lineStart >= countFrom;
    const hidden = windows.length > 0 && inForeignWindow(lineStart, failure.address);
    if (failure.openHead) {
      windows.push({ end: lineEnd + 1 + OPEN_HEAD_WINDOW, address: failure.address });
      if (counting) tally.openHeads++;
    }
    if (!counting) return;
    if (failure.ambiguous) {
      tally.ambiguous++;
      return;
    }
    if (failure.address === null) return;
    if (hidden) {
      tally.suppressed++;
      return;
    }
    const counted = addFailure(tally, failure.address, failure.tries);
    // The first part has no part before it to be joined to.
    if (
      failure.tries !== undefined && part && countFrom > 0 && !part.firstTries.has(failure.address)
    ) {
      part.firstTries.set(failure.address, failure.tries);
    }
    onFailure?.(failure, counted);
  }

  /** Counts and reads the lines of buffer[from, to) (one more than its line feeds), decoded one
   * character per byte into `s`, its bytes `b` beside it for the readers. */
  function scanText(from: number, to: number): void {
    const s = decode(buffer, from, to);
    const b = bytes.subarray(from, to);
    const base = offset + from;
    const length = s.length;
    const counted = countFrom - base; // lines that start before it belong to the part before
    let lines = 0;
    for (let start = 0;;) {
      let end = s.indexOf("\n", start);
      if (end === -1) end = length;
      if (start >= counted) lines++;
      if (end - start > MAX_LINE) {
        if (start >= counted) tally.longLines++;
      } else {
        const failure = readLineAt(s, b, start, end);
        if (failure !== null) record(failure, base + start, base + end);
      }
      if (end === length) break;
      start = end + 1;
    }
    tally.lines += lines;
  }

  /** Reads the complete lines in the buffer and keeps the incomplete last one. */
  function drain(final: boolean): void {
    let start = 0;
    if (skipping) {
      const lf = buffer.subarray(0, used).indexOf(10);
      if (lf === -1 && !final) {
        offset += used;
        used = 0;
        return;
      }
      skipping = false;
      if (skippingCounts) {
        tally.lines++;
        tally.longLines++;
      }
      skippingCounts = true;
      if (lf === -1) {
        offset += used;
        used = 0;
        return;
      }
      start = lf + 1;
    }
    // The complete lines, decoded CHUNK_SIZE bytes at most at a time: V8 keeps longer strings
    // out of its young generation, and reading a log would churn the old one.
    const lastLf = used > start ? buffer.lastIndexOf(10, used - 1) : -1;
    while (start <= lastLf) {
      let lf = lastLf;
      if (lf - start >= CHUNK_SIZE) {
        lf = buffer.lastIndexOf(10, start + CHUNK_SIZE - 1);
        if (lf < start) {
          // A line longer than a piece, and so than MAX_LINE: counted, not read.
          lf = buffer.indexOf(10, start);
          if (offset + start >= countFrom) {
            tally.lines++;
            tally.longLines++;
          }
          start = lf + 1;
          continue;
        }
      }
      scanText(start, lf);
      start = lf + 1;
    }
    if (final && used > start) {
      if (used - start > MAX_LINE) {
        tally.lines++;
        tally.longLines++;
      } else scanText(start, used);
      start = used;
    } else if (used - start > MAX_LINE) {
      skipping = true;
      start = used;
    }
    buffer.copyWithin(0, start, used);
    offset += start;
    used -= start;
  }

  return {
    write(bytes) {
      for (let pos = 0; pos < bytes.length;) {
        const n = Math.min(buffer.length - used, bytes.length - pos);
        buffer.set(bytes.subarray(pos, pos + n), used);
        used += n;
        pos += n;
        drain(false);
      }
    },
    readFrom(fd, position, limit = Infinity) {
      const n = readSync(fd, buffer, used, Math.min(buffer.length - used, limit), position ?? null);
      used += n;
      if (n > 0) drain(false);
      return n;
    },
    end() {
      drain(true);
    },
  };
}

/** Scans a whole string as a log, for tests and small inputs. */
export function scanString(text: string, tally: Tally = newTally()): Tally {
  const scanner = createScanner(tally);
  scanner.write(Buffer.from(text, "latin1"));
  scanner.end();
  return tally;
}

// ---------------------------------------------------------------------------------------------
// Decisions and reports
// ---------------------------------------------------------------------------------------------

/** What `decide` needs to know besides the counts. */
export interface DecideOptions {
  threshold: number;
  ignore: readonly Cidr[];
  banned: ReadonlySet<string>;
  dryRun: boolean;
}

/**
 * The addresses at or over the threshold and what to do with each, highest count first: ignored
 * (loopback, this host, `-i`), already banned, or banned (`would-ban` in a dry run).
 */
export function decide(counts: Iterable<[string, number]>, options: DecideOptions): Decision[] {
  const decisions: Decision[] = [];
  for (const [ip, failures] of counts) {
    if (failures < options.threshold) continue;
    const action: Action = isInAny(ip, options.ignore)
      ? "ignored"
      : options.banned.has(ip)
      ? "already-banned"
      : options.dryRun
      ? "would-ban"
      : "banned";
    decisions.push({ ip, failures, action });
  }
  return decisions.sort((a, b) => b.failures - a.failures);
}

/** Totals printed with the report. */
export interface ScanSummary {
  files: number;
  threshold: number;
  dryRun: boolean;
  errors: string[];
}

const ACTION_WORDS: Record<Action, string> = {
  "banned": "banned",
  "would-ban": "would ban",
  "already-banned": "already banned",
  "ignored": "ignored",
  "below-threshold": "below threshold",
};

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The length the reports' pieces grow to before they are written. */
const REPORT_PIECE = 64 << 10;

/** The human report: one line per address at or over the threshold, then a summary line. */
export function formatReport(
  decisions: readonly Decision[],
  tally: Tally,
  summary: ScanSummary,
  quiet: boolean,
): string {
  return [...textReport(decisions, tally, summary, quiet)].join("");
}

/**
 * {@link formatReport} in pieces of about 64 KB, so that a report of a million addresses never
 * sits in one string (made at once, it took 860 MB instead of 320).
 */
export function* textReport(
  decisions: readonly Decision[],
  tally: Tally,
  summary: ScanSummary,
  quiet: boolean,
): Generator<string> {
  const shown = (d: Decision) => !quiet || d.action === "banned" || d.action === "would-ban";
  // A loop, not Math.max(...lengths): a call with an argument per address overflows the stack
  // once there are a hundred thousand of them.
  let width = 0;
  for (const d of decisions) if (shown(d)) width = Math.max(width, d.ip.length);
  let piece = "";
  for (const d of decisions) {
    if (!shown(d)) continue;
    piece += `${ACTION_WORDS[d.action].padEnd(15)} ${d.ip.padEnd(width)}  ` +
      `${plural(d.failures, "failure")}\n`;
    if (piece.length >= REPORT_PIECE) {
      yield piece;
      piece = "";
    }
  }
  if (!quiet) {
    const actions = (["banned", "would-ban", "already-banned", "ignored"] as const)
      .map((action) => [action, decisions.filter((d) => d.action === action).length] as const)
      .filter(([, n]) => n > 0)
      .map(([action, n]) => `${n} ${ACTION_WORDS[action]}`);
    const notes = [
      tally.ambiguous ? `${tally.ambiguous} ambiguous` : "",
      tally.suppressed ? `${tally.suppressed} after open heads not counted` : "",
      tally.longLines ? `${plural(tally.longLines, "overlong line")} skipped` : "",
    ].filter(Boolean);
    piece += `sipcheck: ${plural(summary.files, "file")}, ${plural(tally.lines, "line")}, ` +
      `${plural(tally.failures, "failure")} from ${
        plural(tally.counts.size, "address")
          .replace("addresss", "addresses")
      } (threshold ${summary.threshold}${summary.dryRun ? ", dry run" : ""})` +
      (actions.length ? `: ${actions.join(", ")}` : ": nothing to do") +
      (notes.length ? `; ${notes.join(", ")}` : "") + "\n";
  }
  if (piece) yield piece;
}

/** Room after {@link REPORT_PIECE} in a piece: more than an address's object written as bytes. */
const JSON_ROOM = 128;

/**
 * The `--json` report as UTF-8, in pieces of about 64 KB so that a million addresses never sit in
 * one string or buffer: one object with the totals and every address with at least one failure,
 * highest count first. `decisions` are as {@link decide} makes them from the same tally: one per
 * address, with its count. The pieces after the first share one buffer: each is valid until the
 * next is asked for, so the caller writes it out (or copies it) first.
 */
export function* jsonReport(
  decisions: readonly Decision[],
  tally: Tally,
  summary: ScanSummary,
): Generator<Uint8Array> {
  // The addresses come highest count first, first seen first, as `decide` orders its decisions:
  // each decision is matched by its place, and a Map is built only if that ever fails. Below
  // every decision's count nothing is looked up (a Map lookup per address of a million made the
  // old generation grow by 40 MB).
  const lowest = decisions.reduce((least, d) => Math.min(least, d.failures), Infinity);
  let next = 0;
  let byIp: Map<string, Action> | undefined;
  const actionOf = (ip: string, failures: number): Action => {
    if (next < decisions.length && decisions[next].ip === ip) return decisions[next++].action;
    if (failures < lowest) return "below-threshold";
    byIp ??= new Map(decisions.map((d) => [d.ip, d.action]));
    return byIp.get(ip) ?? "below-threshold";
  };
  const head = {
    files: summary.files,
    lines: tally.lines,
    failures: tally.failures,
    threshold: summary.threshold,
    dryRun: summary.dryRun,
    ambiguous: tally.ambiguous,
    suppressed: tally.suppressed,
    openHeads: tally.openHeads,
    longLines: tally.longLines,
    errors: summary.errors,
  };
  // Written as bytes into one buffer, never as strings: for a million addresses, the strings of
  // the pieces (made, joined, then encoded to be written) grew the heap by 17 MB, and a new
  // buffer per piece left 20 MB of them for the garbage collector. An address below every
  // decision's count is written without its text ever being made (a million of them: 0.26 s
  // instead of 0.6); the others, and the totals, through JSON.stringify.
  yield Buffer.from(JSON.stringify(head).slice(0, -1) + ',"addresses":[');
  const bytes = Buffer.allocUnsafe(REPORT_PIECE + JSON_ROOM);
  let at = 0;
  let first = true;
  const counts = tally.counts;
  for (const entry of counts.entriesByValue()) {
    if (at >= REPORT_PIECE) {
      yield bytes.subarray(0, at);
      at = 0;
    }
    const start = first ? at + 1 : at + 2;
    const failures = counts.valueAt(entry);
    let end = -1;
    if (failures < lowest && Number.isSafeInteger(failures) && failures >= 0) {
      end = counts.writeAddressAt(entry, bytes, copyBytes(JSON_IP, bytes, start));
      if (end !== -1) {
        end = writeDigits(failures, bytes, copyBytes(JSON_FAILURES, bytes, end));
        end = copyBytes(JSON_BELOW_THRESHOLD, bytes, end);
      }
    }
    if (end === -1) {
      const ip = counts.textAt(entry);
      const object = JSON.stringify({ ip, failures, action: actionOf(ip, failures) });
      const length = Buffer.byteLength(object);
      if (start + length > bytes.length) {
        // Longer than the room left (other text, through the API): a piece of its own.
        if (at > 0) yield bytes.subarray(0, at);
        yield Buffer.from((first ? "\n" : ",\n") + object);
        at = 0;
        first = false;
        continue;
      }
      end = start + bytes.write(object, start);
    }
    if (!first) bytes[start - 2] = 44; // ,
    bytes[start - 1] = 10; // \n
    at = end;
    first = false;
  }
  yield Buffer.concat([bytes.subarray(0, at), JSON_END]);
}

/** Copies the few bytes of `from` into `bytes` at `at`; returns where they end (a loop: `set`
 * costs more for a few bytes). */
function copyBytes(from: Uint8Array, bytes: Uint8Array, at: number): number {
  for (let i = 0; i < from.length; i++) bytes[at + i] = from[i];
  return at + from.length;
}

/** The fixed parts of an address's object in the `--json` report, as ASCII. */
const JSON_IP = Buffer.from('{"ip":"', "latin1");
const JSON_FAILURES = Buffer.from('","failures":', "latin1");
const JSON_BELOW_THRESHOLD = Buffer.from(',"action":"below-threshold"}', "latin1");
const JSON_END = Buffer.from("\n]}\n", "latin1");

// ---------------------------------------------------------------------------------------------
// Firewall plans (pure): what to send to iptables-restore
// ---------------------------------------------------------------------------------------------

/** The two jump rules from INPUT to our chain, as `iptables -S` prints them. */
export function jumpRules(): string[] {
  return ["udp", "tcp"].map((protocol) =>
    `-A INPUT -p ${protocol} -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`
  );
}

/** A ban rule as sipcheck writes it and `iptables -S` prints it: one address, `-j DROP`. */
const BAN_RULE = new RegExp(`^-A ${CHAIN} -s ([0-9a-fA-F.:]+)/(32|128) -j DROP$`);
const NEW_CHAIN = `-N ${CHAIN}`;
const RULE_IN_CHAIN = `-A ${CHAIN} `;
const JUMP_END = ` -j ${CHAIN}`;
const GOTO_END = ` -g ${CHAIN}`;
/**
 * What an address may look like in a rule sipcheck writes: dotted IPv4 or lower-case IPv6. The
 * addresses come canonical from the counts; this keeps anything else (a space, a line feed, an
 * option) out of iptables-restore's input, cheaply enough for 10,000 bans in a cold process.
 */
const RULE_ADDRESS = /^(?:\d{1,3}(?:\.\d{1,3}){3}|[\da-f]{0,4}(?::[\da-f]{0,4}){2,7})$/;

/**
 * Reads `iptables -S` output: does our chain exist, what does it drop, what jumps to it, and
 * which of its rules sipcheck did not write. Only `-s ADDRESS/32 -j DROP` (IPv4) and
 * `-s ADDRESS/128 -j DROP` (IPv6) are bans; any other rule in the chain is foreign.
 */
export function parseListing(listing: string): ChainState {
  const state: ChainState = {
    exists: false,
    bans: new Set(),
    jumps: [],
    jumpPositions: [],
    foreignRules: [],
  };
  const rulesSoFar = new Map<string, number>(); // per chain, for the positions of the jumps
  for (const line of listing.split("\n")) {
    if (line === NEW_CHAIN) state.exists = true;
    if (!line.startsWith("-A ")) continue;
    const chain = line.slice(3).split(" ")[0];
    const position = (rulesSoFar.get(chain) ?? 0) + 1;
    rulesSoFar.set(chain, position);
    if (line.startsWith(RULE_IN_CHAIN)) {
      const address = banAddress(line);
      if (address) state.bans.add(address);
      else state.foreignRules.push(line);
    } else if (line.endsWith(JUMP_END) || line.endsWith(GOTO_END)) {
      state.jumps.push(line);
      state.jumpPositions.push(position);
    }
  }
  return state;
}

/** The address a rule of our chain bans, when it is a ban exactly as sipcheck writes it. */
function banAddress(rule: string): string | null {
  const ban = BAN_RULE.exec(rule);
  const address = ban && normaliseAddress(ban[1], "bare");
  if (!address) return null;
  return (versionOf(address) === 4 ? "32" : "128") === ban[2] ? address : null;
}

/** The name of a family's iptables program. */
export function familyName(version: IpVersion): string {
  return version === 4 ? "iptables" : "ip6tables";
}

/** Rules as a short quoted list: the first three, and how many more. */
function quoteRules(rules: readonly string[]): string {
  const shown = rules.slice(0, 3).map((rule) => `"${rule}"`).join(", ");
  return rules.length > 3 ? `${shown} and ${rules.length - 3} more` : shown;
}

/**
 * Why a ban run must not use this family's chain, or null when it may: the chain holds rules
 * sipcheck did not write (an ACCEPT before the bans would let a banned address through, and
 * jumping to someone else's chain would change what their rules do). Jumps to the chain from
 * elsewhere do not stop a ban: they only send more traffic past the bans.
 */
export function banRefusal(version: IpVersion, state: ChainState): string | null {
  if (state.foreignRules.length === 0) return null;
  return `${familyName(version)}: ${foreignRulesText(state)}; sipcheck bans only in a chain ` +
    `of its own: delete ${state.foreignRules.length === 1 ? "it" : "them"} ` +
    `(${familyName(version)} -D ${CHAIN} N), or rename that chain (${familyName(version)} -E ` +
    `${CHAIN} NEWNAME)`;
}

/** "the sipcheck chain holds a rule sipcheck did not write (…)", for a state that has some. */
function foreignRulesText(state: ChainState): string {
  const rules = state.foreignRules;
  return `the ${CHAIN} chain holds ${rules.length === 1 ? "a rule" : "rules"} sipcheck did not ` +
    `write (${quoteRules(rules)})`;
}

/** Throws SipcheckError(69) when a ban run must not use this family's chain ({@link banRefusal}). */
function refuseForeignChain(version: IpVersion, state: ChainState): void {
  const refusal = banRefusal(version, state);
  if (refusal) throw new SipcheckError(EXIT.unavailable, refusal);
}

/**
 * Why `clear` must not touch this family, or null when it may: the chain holds rules sipcheck
 * did not write (flushing it would delete them), or a rule other than sipcheck's two jumps
 * jumps to it (the chain could not be deleted, and that rule is not sipcheck's to delete).
 */
export function clearRefusal(version: IpVersion, state: ChainState): string | null {
  const ours = jumpRules();
  const foreignJumps = state.jumps.filter((jump) => !ours.includes(jump));
  const reasons: string[] = [];
  if (state.foreignRules.length) reasons.push(foreignRulesText(state));
  if (foreignJumps.length) {
    reasons.push(
      `${foreignJumps.length === 1 ? "a rule" : "rules"} sipcheck did not write ` +
        `${foreignJumps.length === 1 ? "jumps" : "jump"} to it (${quoteRules(foreignJumps)})`,
    );
  }
  return reasons.length ? `${familyName(version)}: ${reasons.join(", and ")}` : null;
}

/** The rule that bans `address` in our chain, as sipcheck writes it and `iptables -S` prints it. */
function banRule(address: string): string {
  return `-A ${CHAIN} -s ${address}/${versionOf(address) === 4 ? 32 : 128} -j DROP`;
}

/** The IP version of a normalised address. */
export function versionOf(address: string): IpVersion {
  return address.includes(":") ? 6 : 4;
}

/**
 * `iptables-restore --noflush` input that adds `addresses` to our chain, creating the chain and
 * the jump rules only if missing (declaring an existing chain would flush it). Only addresses
 * that pass `isIP` get here: the input is a text protocol.
 */
export function banInput(state: ChainState, addresses: readonly string[]): string {
  const lines = ["*filter"];
  if (!state.exists) lines.push(`:${CHAIN} - [0:0]`);
  for (const address of addresses) {
    if (!RULE_ADDRESS.test(address)) {
      throw new Error(`not an IP address: ${JSON.stringify(address)}`);
    }
    lines.push(banRule(address));
  }
  for (const jump of jumpRules()) {
    if (!state.jumps.includes(jump)) lines.push(jump.replace("-A INPUT", "-I INPUT 1"));
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/** Input that undoes {@link banInput} for the same state and addresses. */
export function unbanInput(state: ChainState, addresses: readonly string[]): string {
  const lines = ["*filter"];
  for (const jump of jumpRules()) {
    if (!state.jumps.includes(jump)) lines.push(jump.replace("-A ", "-D "));
  }
  if (!state.exists) lines.push(`-F ${CHAIN}`, `-X ${CHAIN}`);
  else {
    for (const address of addresses) {
      lines.push(banRule(address).replace("-A ", "-D "));
    }
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/**
 * Input that removes our jump rules (every copy of them) and our chain, or null when there is
 * nothing of ours. Only for a state that {@link clearRefusal} finds nothing against: flushing a
 * chain that holds foreign rules would delete them.
 */
export function clearInput(state: ChainState): string | null {
  if (state.foreignRules.length) throw new Error(`the ${CHAIN} chain holds foreign rules`);
  const ours = jumpRules();
  const jumps = state.jumps.filter((jump) => ours.includes(jump));
  if (!state.exists && jumps.length === 0) return null;
  const lines = ["*filter", ...jumps.map((jump) => jump.replace("-A ", "-D "))];
  if (state.exists) lines.push(`-F ${CHAIN}`, `-X ${CHAIN}`);
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/**
 * Input that undoes {@link clearInput} for the same state: the chain with its bans in their
 * order, and our jumps back where they stood in INPUT.
 */
export function unclearInput(state: ChainState): string {
  const lines = ["*filter"];
  if (state.exists) lines.push(`:${CHAIN} - [0:0]`);
  for (const address of state.bans) lines.push(banRule(address));
  const ours = jumpRules();
  const jumps = state.jumps.map((jump, k) => ({ jump, position: state.jumpPositions[k] }))
    .filter(({ jump }) => ours.includes(jump))
    .sort((a, b) => a.position - b.position);
  for (const { jump, position } of jumps) {
    lines.push(jump.replace("-A INPUT", `-I INPUT ${position}`));
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Edges: processes, files, lock
// ---------------------------------------------------------------------------------------------

/**
 * Runs a program by absolute path with an argv array, never through a shell. On Deno it uses
 * Deno.Command, which needs only `--allow-run=<path>`; on Node, child_process.spawn.
 */
export const runProgram: Runner = async (binary, args, input) => {
  if (deno) {
    const child = new deno.Command(binary, {
      args: [...args],
      stdin: input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (input !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(new TextEncoder().encode(input));
        await writer.close();
      } catch {
        // A program that exits without reading all of its input: its code and stderr say why.
      }
    }
    const output = await child.output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  }
  // Asynchronous, so that the IPv4 and IPv6 calls of a run can go at once.
  return await new Promise<RunResult>((resolve, reject) => {
    const child = spawn(binary, [...args], {
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.once("error", reject);
    child.once("close", (code) => {
      resolve({
        code: code ?? 1,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8"),
      });
    });
    child.stdin?.on("error", () => {}); // a program that exits without reading: its code says why
    child.stdin?.end(input);
  });
};

/** An expected failure, with the exit code and the one line to print. */
export class SipcheckError extends Error {
  code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

/** Short words for the errors people meet when reading files. */
function describeFileError(error: unknown): string {
  const code = (error as { code?: string }).code;
  const name = (error as { name?: string }).name;
  if (code === "ENOENT" || name === "NotFound") return "no such file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR" || name === "IsADirectory") return "is a directory";
  if (code === "ENXIO") return "a socket cannot be opened by its name (read standard input as -)";
  if (name === "NotCapable" || name === "PermissionDenied") {
    return "not allowed by Deno's permissions (add it to --allow-read)";
  }
  return String((error as Error)?.message ?? error).split("\n")[0];
}

/** True if the path exists, if only as a link to nothing (false, not an error, when Deno may not
 * look at it): a broken link named on the command line is reported as itself. */
function pathExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Where to read a LOG argument: `-` is standard input; a bare name that does not exist here is
 * looked up in {@link LOG_DIR}, so the classic crontab line `sipcheck messages` still works.
 */
export function resolveLog(arg: string, exists: (path: string) => boolean = pathExists): string {
  if (arg === "-" || arg.includes("/") || exists(arg)) return arg;
  return join(LOG_DIR, arg);
}

/** The default log: `messages`, or `messages.log` (Asterisk 19+) when only that exists. */
export function defaultLog(exists: (path: string) => boolean = pathExists): string {
  const [classic, modern] = DEFAULT_LOGS.map((name) => join(LOG_DIR, name));
  return !exists(classic) && exists(modern) ? modern : classic;
}

/** Files at least this large are read on several cores at once. */
export const PARALLEL_MIN = 128 << 20;
/** The least a worker thread takes over: a smaller rest is read where it is. */
const SPLIT_MIN = 16 << 20;
/** The least this thread takes back from the end of a worker's part once its own is read. */
const STEAL_MIN = 4 << 20;
/** Threads that read one file at most. */
const PARALLEL_MAX = 4;
/** The young generation of each reading thread, in MB (V8's default grows to 16 MB or more). */
const WORKER_YOUNG_GENERATION_MB = 4;

/** Where a worker thread stands, in its slot of the array the threads share. */
const STARTING = 0;
const READY = 1; // started, waiting for its part
const ASSIGNED = 2; // its part is in the bounds array
const UNNEEDED = 3; // there is nothing left for it: it ends

/** Per slot in the bounds array: where the part starts, where it ends, and how far its thread
 * may have read (the end moves down when this thread takes back what is left of it). */
const BOUNDS = 3;

/** Takes the lock of `slot` (the threads hold it only to read or move a part's end). */
function lock(locks: Int32Array, slot: number): void {
  while (Atomics.compareExchange(locks, slot, 0, 1) !== 0) Atomics.wait(locks, slot, 1, 1);
}

function unlock(locks: Int32Array, slot: number): void {
  Atomics.store(locks, slot, 0);
  Atomics.notify(locks, slot);
}

/** Where the line that holds byte `position` of an open file ends (after its line feed), or `end`
 * if that comes first. */
function nextLineStart(fd: number, position: number, end: number): number {
  const probe = Buffer.allocUnsafe(64 << 10);
  while (position < end) {
    const n = readSync(fd, probe, 0, Math.min(probe.length, end - position), position);
    if (n === 0) break;
    const lf = probe.subarray(0, n).indexOf(10);
    if (lf !== -1) return position + lf + 1;
    position += n;
  }
  return end;
}

/**
 * Reads the part of an open file from `countFrom` (with what comes before it that the part's open
 * heads need, see {@link ScanPart}) to where `to` says, asked before each read with the position
 * reached: the end of a part may move down while it is read.
 */
function scanPart(
  fd: number,
  countFrom: number,
  to: (position: number) => number,
  tally: Tally,
  firstTries: AddressCounts,
): void {
  const offset = Math.max(0, countFrom - PART_LOOKBACK);
  const scanner = createScanner(tally, undefined, { offset, countFrom, firstTries });
  let position = offset;
  for (;;) {
    const end = to(position);
    if (position >= end) break;
    const n = scanner.readFrom(fd, position, Math.min(READ_SIZE, end - position));
    if (n === 0) break;
    position += n;
  }
  scanner.end();
}

/** What a worker thread sends back: its tally, with the counts as typed arrays, and where its
 * part starts. */
interface PartResult {
  countFrom: number;
  tally: PartTally;
  firstTries: AddressCounts | CountsSnapshot;
}

/** What a worker thread is given; `states`, `locks` and `bounds` are shared by all the threads. */
interface ReaderData {
  path: string;
  /** The device and inode of the file this thread opened (as text: they may not fit a number):
   * a worker reads the path only if it is still that file. */
  dev: string;
  ino: string;
  slot: number;
  states: Int32Array;
  locks: Int32Array;
  /** Per slot, once it is ASSIGNED: its part (see {@link BOUNDS}). */
  bounds: Float64Array;
}

/** A worker thread that may take over the end of this thread's part. */
interface Reader {
  worker: Worker;
  /** Settles when it has said it is READY. */
  ready: Promise<void>;
  /** Its part's tally, once it is ASSIGNED one. */
  result: Promise<PartResult>;
}

/** Starts a worker thread running this same file as a {@link Reader}. */
function startReader(data: ReaderData): Reader {
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { sipcheckReader: data },
    // What a part allocates dies young; a small young generation keeps the thread's memory
    // down (measured on a 330 MB log: 5 to 15 MB less at peak with 8 MB, 7 more with 4 MB) and
    // costs no time that shows through the noise.
    resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
  });
  let onReady!: () => void;
  let onResult!: (result: PartResult) => void;
  let onFailure!: (error: unknown) => void;
  const failed = new Promise<never>((_, reject) => onFailure = reject);
  const ready = Promise.race([new Promise<void>((resolve) => onReady = resolve), failed]);
  const result = Promise.race([new Promise<PartResult>((resolve) => onResult = resolve), failed]);
  worker.on("message", (message) => {
    if (message === "ready") onReady();
    else if (typeof message?.failed === "string") onFailure(new Error(message.failed));
    else onResult(message);
  });
  worker.once("error", onFailure);
  worker.once("exit", (code) => onFailure(new Error(`a reading thread stopped (${code})`)));
  // Awaited only where needed: a thread that was not given a part is simply ended.
  for (const promise of [failed, ready, result]) promise.catch(() => {});
  return { worker, ready, result };
}

/**
 * A worker thread of {@link scanFile}: opens the log, and if it is the very file the main thread
 * reads (same device and inode: not one put in its place since), says it is ready, waits for a
 * part, reads it and sends its tally back. A thread that cannot open it, or finds another file
 * there, never says it is ready: the main thread reads on without it. No error leaves the thread
 * (Deno would print it with a stack trace): a failure while reading a part is sent back as
 * `{ failed }`, and the main thread reads that part itself.
 */
function readerThread(data: ReaderData): void {
  let fd: number | undefined;
  try {
    fd = openSync(data.path, "r");
    const stat = fstatSync(fd, { bigint: true });
    if (String(stat.dev) !== data.dev || String(stat.ino) !== data.ino) return;
    readPart(fd, data);
  } catch (error) {
    parentPort?.postMessage({ failed: describeFileError(error) });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The rest of {@link readerThread}, with the log open as `fd`. */
function readPart(fd: number, { slot, states, locks, bounds }: ReaderData): void {
  if (Atomics.compareExchange(states, slot, STARTING, READY) !== STARTING) return;
  parentPort?.postMessage("ready");
  Atomics.wait(states, slot, READY);
  if (Atomics.load(states, slot) !== ASSIGNED) return;
  const countFrom = bounds[BOUNDS * slot];
  /** The end of the part, and how far the next read may go, under the lock: the end may have
   * moved down to a point the part has not reached. */
  const claim = (position: number) => {
    lock(locks, slot);
    const to = bounds[BOUNDS * slot + 1];
    bounds[BOUNDS * slot + 2] = Math.min(to, position + READ_SIZE);
    unlock(locks, slot);
    return to;
  };
  const tally = newTally();
  const firstTries = new AddressCounts();
  scanPart(fd, countFrom, claim, tally, firstTries);
  const counts = tally.counts.handOver();
  const lastTries = tally.lastTries.handOver();
  const first = firstTries.handOver();
  const result: PartResult = {
    countFrom,
    tally: { ...tally, counts, lastTries },
    firstTries: first,
  };
  const buffers = [counts, lastTries, first].flatMap((c) => [c.keys, c.values, c.kinds, c.words])
    .map((array) => array.buffer as ArrayBuffer);
  parentPort?.postMessage(result, buffers);
}

/**
 * Whether worker threads can run this file. Under Deno a worker reads the file it runs, which
 * needs `--allow-read` for it (not needed to run it in the first place; the first line grants it
 * for /usr/local/bin); without that, the log is read by this thread alone rather than by a worker
 * that fails to start. Deno 2.0.0 to 2.0.4 ran a worker of a file without `.ts` (as installed) as
 * CommonJS, which fails with an error on stderr: there too this thread reads alone.
 */
function mayStartReaders(): boolean {
  if (deno === undefined) return true;
  if (isVersionBefore(deno.version.deno, "2.0.6")) return false;
  const self = new URL(import.meta.url);
  return deno.permissions.querySync({ name: "read", path: self }).state === "granted";
}

/** How {@link scanFile} reads a large file; the defaults are for use, other values for tests. */
export interface ScanFileOptions {
  /** Files at least this large are read on every core at once (default PARALLEL_MIN). */
  parallelMin?: number;
  /** The least a worker thread takes over (default SPLIT_MIN). */
  splitMin?: number;
  /** The least this thread takes back from a worker's part (default STEAL_MIN). */
  stealMin?: number;
  /** The share of what is left that a worker thread takes over (default a half). */
  share?: number;
  /** Called with each piece this thread takes back from a worker, `[start, end)`. */
  onTakeBack?: (start: number, end: number) => void;
  /** Called with each stretch of the file read to find a line start where to cut it,
   * `[start, end)`. */
  onLineSearch?: (start: number, end: number) => void;
  /** Wait until the worker threads have started (or failed to) before reading anything. */
  waitForReaders?: boolean;
  /** Called once the file is open, before any worker thread starts (tests move it there). */
  onOpened?: () => void;
}

/**
 * Scans a file into `tally`; throws on open or read errors. A file that is not a regular file (a
 * pipe, as from `<(zcat log.gz)`, a FIFO, a device) is read as a stream to its end, as standard
 * input is (see {@link scanStream}). A large regular file is read on every core at once: this
 * thread reads from the start, and each worker thread, once it has started, takes over the
 * second half of what this thread has left to read, cut at a line feed (so a thread that
 * needs long to start costs nothing but its share). When this thread is done, it takes back the
 * second half of what a worker has left, again and again while there is enough, so that a slower
 * thread does not keep the others waiting. The parts' tallies are joined exactly (see
 * {@link ScanPart}).
 */
export async function scanFile(
  path: string,
  tally: Tally,
  {
    parallelMin = PARALLEL_MIN,
    splitMin = SPLIT_MIN,
    stealMin = STEAL_MIN,
    share = 0.5,
    waitForReaders = false,
    onTakeBack,
    onOpened,
    onLineSearch,
  }: ScanFileOptions = {},
): Promise<void> {
  const fd = openSync(path, "r");
  const readers: Reader[] = [];
  let parts: PartResult[];
  try {
    const stat = fstatSync(fd, { bigint: true });
    if (!stat.isFile() || isGzipFile(fd)) {
      // Its size says nothing of what is to come (0 for a pipe), and it cannot be read at an
      // offset: it is read once, in order, to its end (so is a compressed log, decompressed).
      await scanStream(fileChunks(fd), createScanner(tally));
      return;
    }
    const size = Number(stat.size);
    const [dev, ino] = [String(stat.dev), String(stat.ino)];
    onOpened?.();
    const count = size < parallelMin || !mayStartReaders()
      ? 0
      : Math.min(PARALLEL_MAX, availableParallelism()) - 1;
    const states = new Int32Array(new SharedArrayBuffer(4 * count));
    const locks = new Int32Array(new SharedArrayBuffer(4 * count));
    const bounds = new Float64Array(new SharedArrayBuffer(8 * BOUNDS * count));
    for (let slot = 0; slot < count; slot++) {
      readers.push(startReader({ path, dev, ino, slot, states, locks, bounds }));
    }
    if (waitForReaders) await Promise.allSettled(readers.map(({ ready }) => ready));
    let to = size; // where this thread's part ends: readers take over what comes after
    const given = Math.min(Math.max(share, 0), 1); // a share, whatever a caller passed
    // The last search for a cut that found no line start before `to` (a long stretch without a
    // line feed, as a crash's NUL tail): none can be found from any later point either, so that
    // stretch is not read again on each of this thread's reads (which made the time quadratic).
    let bareFrom = Infinity;
    let bareTo = -1;
    /** The line start after `from` where a reader's part may begin, or `to` if there is none. */
    const cutAfter = (from: number) => {
      if (to === bareTo && from >= bareFrom) return to;
      const cut = nextLineStart(fd, from, to);
      onLineSearch?.(from, cut);
      if (cut === to) [bareFrom, bareTo] = [from, to];
      return cut;
    };
    /** Gives each reader that is ready its share of what is left from `position`. */
    const handOut = (position: number) => {
      for (let slot = 0; slot < count; slot++) {
        if (Atomics.load(states, slot) !== READY) continue;
        const split = to - position < 2 * splitMin
          ? to
          : cutAfter(position + Math.floor((to - position) * (1 - given)));
        if (split === to) continue; // too little left: another thread could not help
        bounds.set([split, to, split], BOUNDS * slot);
        to = split;
        Atomics.store(states, slot, ASSIGNED);
        Atomics.notify(states, slot);
      }
      return to;
    };
    scanPart(fd, 0, handOut, tally, new AddressCounts());
    for (let slot = 0; slot < count; slot++) {
      // A thread still starting or waiting is not needed any more.
      Atomics.compareExchange(states, slot, STARTING, UNNEEDED);
      Atomics.compareExchange(states, slot, READY, UNNEEDED);
      Atomics.notify(states, slot);
    }
    const assigned = [...readers.keys()].filter((slot) => Atomics.load(states, slot) === ASSIGNED);
    // Then this thread takes back the second half of what a worker has left, while there is
    // enough of it: a worker that started late or reads slowly does not keep the others waiting.
    const taken: PartResult[] = [];
    for (let slot = 0; slot < count; slot++) {
      for (let part; (part = takeBack(fd, locks, bounds, slot, stealMin, onLineSearch)) !== null;) {
        const [countFrom, end] = part;
        onTakeBack?.(countFrom, end);
        const result = { countFrom, tally: newTally(), firstTries: new AddressCounts() };
        scanPart(fd, countFrom, () => end, result.tally, result.firstTries);
        taken.push(result);
      }
    }
    // A worker that failed or stopped leaves its part, as far as it still reaches, to this thread.
    const results = await Promise.all(assigned.map(async (slot) => {
      try {
        return await readers[slot].result;
      } catch {
        const [countFrom, end] = bounds.subarray(BOUNDS * slot, BOUNDS * slot + 2);
        const result = { countFrom, tally: newTally(), firstTries: new AddressCounts() };
        scanPart(fd, countFrom, () => end, result.tally, result.firstTries);
        return result;
      }
    }));
    parts = [...results, ...taken];
  } finally {
    closeSync(fd);
    // Done or failed, the workers end here: their memory goes before the join needs more.
    for (const { worker } of readers) worker.terminate();
  }
  for (const { tally: part, firstTries } of parts.sort((a, b) => a.countFrom - b.countFrom)) {
    joinTally(tally, part, firstTries);
    for (const counts of [part.counts, part.lastTries, firstTries]) release(counts);
  }
}

/**
 * Moves the end of the part of the worker in `slot` down to a line start about halfway between
 * how far it may have read and its end, and returns what it gave up, `[start, end]`; null when
 * less than twice `least` is left (or the slot never had a part: its bounds are zeros).
 */
function takeBack(
  fd: number,
  locks: Int32Array,
  bounds: Float64Array,
  slot: number,
  least: number,
  onLineSearch?: (start: number, end: number) => void,
): [number, number] | null {
  lock(locks, slot);
  try {
    const to = bounds[BOUNDS * slot + 1];
    // Never before the part's start, whatever the size of a read and of the look-back before it.
    const reached = Math.max(bounds[BOUNDS * slot], bounds[BOUNDS * slot + 2]);
    if (to - reached < Math.max(2 * least, 1)) return null;
    const from = reached + Math.floor((to - reached) / 2);
    const cut = nextLineStart(fd, from, to);
    onLineSearch?.(from, cut);
    if (cut >= to) return null;
    bounds[BOUNDS * slot + 1] = cut;
    return [cut, to];
  } finally {
    unlock(locks, slot);
  }
}

/** Reads an open file from where it stands to its end, in order (a pipe cannot be read at an
 * offset); each read waits for data, as `cat` does. */
async function* fileChunks(fd: number): AsyncGenerator<Uint8Array> {
  for (;;) {
    const chunk = Buffer.allocUnsafe(READ_SIZE);
    const n = readSync(fd, chunk, 0, chunk.length, null);
    if (n === 0) return;
    yield chunk.subarray(0, n);
  }
}

/** The first two bytes of gzip data. */
const GZIP_MAGIC = [0x1f, 0x8b];

/** True when `bytes` start as gzip data does. */
function isGzipHead(bytes: Uint8Array): boolean {
  return bytes[0] === GZIP_MAGIC[0] && bytes[1] === GZIP_MAGIC[1];
}

/** True if the regular file open as `fd` starts as gzip data does (its offset does not move). */
function isGzipFile(fd: number): boolean {
  const head = Buffer.alloc(2);
  return readSync(fd, head, 0, 2, 0) === 2 && isGzipHead(head);
}

/**
 * Scans a stream (standard input, a pipe, a compressed file) through the scanner, to its end.
 * gzip data (a rotated log, `messages.1.gz`) is decompressed as it is read; data that is not whole
 * gzip throws, after what came before the fault is counted.
 */
async function scanStream(stream: AsyncIterable<Uint8Array>, scanner: Scanner): Promise<void> {
  const chunks = stream[Symbol.asyncIterator]();
  let head: Uint8Array = new Uint8Array(0);
  let done = false;
  while (head.length < GZIP_MAGIC.length && !done) {
    const next = await chunks.next();
    if (next.done) done = true;
    else head = head.length ? Buffer.concat([head, next.value]) : next.value;
  }
  async function* all(): AsyncGenerator<Uint8Array> {
    if (head.length) yield head;
    for (let next; !done && !(next = await chunks.next()).done;) yield next.value;
  }
  if (isGzipHead(head)) {
    try {
      await pipeline(all(), createGunzip(), async (inflated: AsyncIterable<Uint8Array>) => {
        for await (const chunk of inflated) scanner.write(chunk);
      });
    } catch (error) {
      const message = String((error as Error)?.message ?? error).split("\n")[0];
      const zlib = String((error as { code?: string }).code ?? "").startsWith("Z_");
      throw zlib ? new Error(`not whole gzip data (${message})`) : error;
    }
  } else for await (const chunk of all()) scanner.write(chunk);
  scanner.end();
}

/** The addresses of this host's interfaces, normalised. */
function ownAddresses(): string[] {
  const addresses: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const info of list ?? []) {
      const address = normaliseAddress(info.address, "bare");
      if (address) addresses.push(address);
    }
  }
  return addresses;
}

/** True while process `pid` runs (`kill -0`). */
async function isRunning(run: Runner, pid: number): Promise<boolean> {
  try {
    return (await run(KILL, ["-0", String(pid)])).code === 0;
  } catch {
    return true; // cannot tell: assume it runs rather than steal a live lock
  }
}

/**
 * Takes the lock file (exclusive create, holding our pid and mode). A lock whose process is gone
 * is taken over. Throws a SipcheckError(75) when another run holds it.
 */
export async function takeLock(path: string, run: Runner, mode: string): Promise<void> {
  const text = `${process.pid} ${mode}\n`;
  let tookOver = false;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, "wx", 0o644);
      let ino: bigint;
      try {
        writeSync(fd, text);
        ino = fstatSync(fd, { bigint: true }).ino;
      } finally {
        closeSync(fd);
      }
      if (tookOver) await checkTakeover(path, text, ino);
      return;
    } catch (error) {
      if (error instanceof SipcheckError) throw error;
      if ((error as { code?: string }).code !== "EEXIST") {
        throw new SipcheckError(
          EXIT.unexpected,
          `cannot create lock file "${path}": ${describeFileError(error)}`,
        );
      }
    }
    if (!isFileOrGone(path)) {
      // Not a lock sipcheck made (a directory, a link): not ours to read or remove.
      throw new SipcheckError(
        EXIT.unexpected,
        `the lock path ${path} is not a file; remove what is there, sipcheck will not`,
      );
    }
    const seen = readLock(path);
    if (seen === null) continue; // removed meanwhile: try again
    if (seen.text === "" && Date.now() - seen.mtimeMs < LOCK_WRITE_MS) {
      // Created by another run that has not written its pid yet.
      throw new SipcheckError(
        EXIT.tempFail,
        `another sipcheck run is taking the lock (${path}); try again later`,
      );
    }
    const [pidText, holderMode] = seen.text.trim().split(" ");
    const pid = Number(pidText);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && await isRunning(run, pid)) {
      throw new SipcheckError(
        EXIT.tempFail,
        holderMode === "watch"
          ? `a sipcheck watcher is active (pid ${pid}, lock ${path}); it bans already`
          : `another sipcheck run holds the lock (pid ${pid}, ${path}); try again later`,
      );
    }
    // Stale: its process is gone. Another run may have found so too, and taken the lock over
    // while `kill -0` ran: the lock is removed only if it is still the file and the text read.
    const now = readLock(path);
    if (now === null || now.ino !== seen.ino || now.text !== seen.text) continue;
    try {
      unlinkSync(path);
      tookOver = true;
    } catch { /* someone else took it over first */ }
  }
  throw new SipcheckError(EXIT.tempFail, `could not take the lock ${path}; try again later`);
}

/** How long a lock file may stay empty while the run that created it writes its pid, in ms. */
const LOCK_WRITE_MS = 10_000;

/** How long a run that took over a stale lock waits before it checks the lock is still its own. */
const LOCK_SETTLE_MS = 100;

/**
 * After taking over a stale lock: two runs that found it stale at once may each have removed it,
 * the second removing the lock the first had just made. Once the other has had time to finish,
 * the lock must still be this run's (`text`, file `ino`); if not, the other run has it: 75.
 */
async function checkTakeover(path: string, text: string, ino: bigint): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, LOCK_SETTLE_MS));
  const now = readLock(path);
  if (now === null || now.ino !== ino || now.text !== text) {
    throw new SipcheckError(
      EXIT.tempFail,
      `another sipcheck run took over the stale lock ${path} at the same time; try again later`,
    );
  }
}

/** The lock file's text, inode and change time, read from one open file; null when it is gone. */
function readLock(path: string): { text: string; ino: bigint; mtimeMs: number } | null {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return null;
  }
  try {
    const stat = fstatSync(fd, { bigint: true });
    return { text: readFileSync(fd, "utf8"), ino: stat.ino, mtimeMs: Number(stat.mtimeMs) };
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** True when `path` is a regular file, itself not a link, or is not there (any more). */
function isFileOrGone(path: string): boolean {
  try {
    return lstatSync(path).isFile();
  } catch {
    return true; // gone meanwhile (or unreadable: the next steps say so)
  }
}

/** Removes the lock file if it is ours. */
export function releaseLock(path: string): void {
  try {
    if (readFileSync(path, "utf8").split(" ")[0] === String(process.pid)) unlinkSync(path);
  } catch { /* already gone */ }
}

// ---------------------------------------------------------------------------------------------
// Firewall verbs: one small function each
// ---------------------------------------------------------------------------------------------

/** Runs an iptables binary; a missing binary or a failure becomes SipcheckError(69). */
async function firewall(run: Runner, binary: string, args: string[], input?: string) {
  let result: RunResult;
  try {
    result = await run(binary, args, input);
  } catch (error) {
    const why = describeFileError(error);
    if (why === "no such file") throw new MissingProgramError(binary);
    throw new SipcheckError(EXIT.unavailable, `cannot run ${binary}: ${why}`);
  }
  if (result.code !== 0) {
    const why = failureReason(result.stderr, result.code);
    throw new SipcheckError(EXIT.unavailable, `${binary} ${args.join(" ")} failed: ${why}`);
  }
  return result;
}

/** What iptables puts before its messages: `ip6tables-restore v1.8.9 (nf_tables): `. */
const IPTABLES_BANNER = /^[\w.-]+ v\d+(?:\.\d+)*(?: \([^)]*\))?:\s*/;
/** The line iptables adds after a usage error, which says nothing about the failure. */
const IPTABLES_HINT = /^Try `[^']*' or '[^']*' for more information\.$/;
/** The longest reason quoted from a failed command's stderr. */
const REASON_MAX = 400;

/**
 * Why an iptables command failed, in one line, from its stderr: every line that says something
 * (iptables-nft writes its version banner on a line of its own, and the cause on the next), without
 * the banner and the `Try ... --help` hint, joined with "; "; the exit code when nothing is left.
 */
export function failureReason(stderr: string, code: number): string {
  const lines = stderr.split("\n")
    .map((line) => line.replace(/\p{Cc}/gu, " ").replace(IPTABLES_BANNER, "").trim())
    .filter((line) => line !== "" && !IPTABLES_HINT.test(line));
  const reason = lines.join("; ");
  if (reason === "") return `exit code ${code}`;
  return reason.length > REASON_MAX ? `${reason.slice(0, REASON_MAX - 1)}…` : reason;
}

/** A firewall program that is not installed (69). */
export class MissingProgramError extends SipcheckError {
  constructor(binary: string) {
    super(EXIT.unavailable, `${binary} not found: install iptables (apt-get install iptables)`);
  }
}

/**
 * Reads both families' chains, IPv4 then IPv6, for `list` and `clear`. A family whose program is
 * not installed (ip6tables on a host set up for IPv4 only) can hold nothing sipcheck wrote, so it
 * reads as empty; if neither is installed, that is an error (69).
 */
async function listBothChains(run: Runner): Promise<ChainState[]> {
  const read = await Promise.allSettled(
    ([4, 6] as const).map((version) => listChain(run, version)),
  );
  const errors = read.flatMap((result) => result.status === "rejected" ? [result.reason] : []);
  const other = errors.find((error) => !(error instanceof MissingProgramError));
  if (other !== undefined) throw other;
  if (errors.length === read.length) throw errors[0]; // neither program is installed
  return read.map((result) => result.status === "fulfilled" ? result.value : parseListing(""));
}

/** Reads our part of one family's filter table (one `iptables -S` call). */
export async function listChain(run: Runner, version: IpVersion): Promise<ChainState> {
  const result = await firewall(run, IPTABLES[version].list, ["-w", "-S"]);
  return parseListing(result.stdout);
}

/**
 * Reads one family's chain for a ban run; SipcheckError(69) when the chain holds rules sipcheck
 * did not write ({@link banRefusal}): a run neither adds to such a chain nor trusts its bans.
 */
export async function listChainForBans(run: Runner, version: IpVersion): Promise<ChainState> {
  const state = await listChain(run, version);
  refuseForeignChain(version, state);
  return state;
}

/** Adds bans in one atomic `iptables-restore --noflush` batch (never to a chain that holds
 * foreign rules: SipcheckError(69)). */
export async function addBans(
  run: Runner,
  version: IpVersion,
  state: ChainState,
  addresses: readonly string[],
): Promise<void> {
  refuseForeignChain(version, state);
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], banInput(state, addresses));
}

/** Undoes {@link addBans} (used when the other family's batch fails). */
export async function removeBans(
  run: Runner,
  version: IpVersion,
  state: ChainState,
  addresses: readonly string[],
): Promise<void> {
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], unbanInput(state, addresses));
}

/** Removes our jump rules and chain in one batch; false when there was nothing of ours. The
 * caller has checked {@link clearRefusal}. */
export async function clearChain(
  run: Runner,
  version: IpVersion,
  state: ChainState,
): Promise<boolean> {
  const input = clearInput(state);
  if (input === null) return false;
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], input);
  return true;
}

/** Undoes {@link clearChain} (used when the other family's batch fails). */
export async function unclearChain(
  run: Runner,
  version: IpVersion,
  state: ChainState,
): Promise<void> {
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], unclearInput(state));
}

// ---------------------------------------------------------------------------------------------
// sipcheck audit: read Asterisk's configuration and say where a stranger can make calls on your
// bill or take control of the PBX. `sipcheck audit [--config-dir DIR] [--json]`; exit codes follow
// the monitoring-plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN). In order: findings,
// configuration sources, the config parser (comments, includes, templates), the dialplan model
// and the walk that finds dial-outs, one function per check, then output and the command.
// ---------------------------------------------------------------------------------------------

// ----- Findings --------------------------------------------------------------

/** How bad a finding is: critical = no password needed, warning = a weakness, info = worth knowing. */
export type AuditSeverity = "critical" | "warning" | "info";

/** The stable finding codes; monitoring rules and scripts may match on them. */
export const AUDIT_CODES = [
  "guest-reaches-dialout",
  "anonymous-reaches-dialout",
  "no-secret-reaches-dialout",
  "ami-open-weak-secret",
  "guest-allowed",
  "anonymous-endpoint",
  "no-secret",
  "alwaysauthreject-off",
  "insecure-invite",
  "weak-secret",
  "ami-open-permit",
  "shared-pin",
  "include-missing",
  "include-cycle",
  "unresolved",
] as const;

/** One of {@link AUDIT_CODES}. */
export type AuditCode = typeof AUDIT_CODES[number];

/** One thing the audit found, with where it is and what to do about it. */
export type AuditFinding = {
  severity: AuditSeverity;
  code: AuditCode;
  /** Path relative to the config dir (absolute when outside it). */
  file: string;
  /** 1-based line; 0 when the finding is about a whole file or a default value. */
  line: number;
  message: string;
  /** For reachability findings: each step from the entry point to the dial-out, "file:line text". */
  chain?: string[];
};

/** The overall result, as a monitoring plugin reports it. */
export type AuditStatus = "OK" | "WARNING" | "CRITICAL" | "UNKNOWN";

function makeFinding(
  severity: AuditSeverity,
  code: AuditCode,
  where: { file: string; line: number },
  message: string,
  chain?: string[],
): AuditFinding {
  const result: AuditFinding = { severity, code, file: where.file, line: where.line, message };
  if (chain && chain.length > 0) result.chain = chain;
  return result;
}

// ----- Configuration sources -------------------------------------------------

/** Where configuration files come from: the disk, or an in-memory map in tests. Paths are absolute. */
export type ConfigSource = {
  /** The file's text, or undefined when it does not exist; throws an
   * {@link UnreadableConfigError} when it exists but cannot be read. */
  readText(path: string): string | undefined;
  /** The names in a directory, or undefined when it does not exist or is not a directory; throws
   * an {@link UnreadableConfigError} when it exists but cannot be listed. */
  listDir(path: string): string[] | undefined;
};

/**
 * A configuration file or directory that exists but cannot be read (permissions, a directory
 * where a file should be, an I/O error). The audit cannot vouch for a configuration it could not
 * read, so it ends UNKNOWN naming the path, rather than judging what it could read as the whole.
 */
export class UnreadableConfigError extends Error {
  /** The path that could not be read. */
  readonly path: string;
  /** The system error code (EACCES, EISDIR, EIO, ...). */
  readonly code: string;

  constructor(path: string, code: string) {
    super(`cannot read ${path} (${code})`);
    this.path = path;
    this.code = code;
  }
}

/** Error codes that mean a configuration path is simply not there. */
const MISSING_PATH_CODES: readonly string[] = ["ENOENT", "ENOTDIR"];

/** Runs `read`; undefined when `path` does not exist, an {@link UnreadableConfigError} when it
 * cannot be read. */
function readConfigPath<T>(path: string, read: (path: string) => T): T | undefined {
  try {
    return read(path);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && MISSING_PATH_CODES.includes(code)) return undefined;
    throw new UnreadableConfigError(path, typeof code === "string" ? code : firstLineOf(error));
  }
}

/** Reads configuration files from the local disk. */
export function diskSource(): ConfigSource {
  return {
    readText: (path) => readConfigPath(path, (file) => readFileSync(file, "utf8")),
    // A file where a directory is looked for (ENOTDIR) is no directory, as a missing one.
    listDir: (path) => readConfigPath(path, (dir) => readdirSync(dir)),
  };
}

/** Serves files from a map of absolute path to text; directories are implied by the paths. */
export function memorySource(files: Record<string, string>): ConfigSource {
  const directories = new Map<string, Set<string>>();
  for (const path of Object.keys(files)) {
    let child = path;
    let parent = dirname(path);
    while (parent !== child) {
      const names = directories.get(parent) ?? new Set<string>();
      names.add(child.slice(parent.length).replace(/^\//, ""));
      directories.set(parent, names);
      child = parent;
      parent = dirname(parent);
    }
  }
  return {
    readText: (path) => Object.hasOwn(files, path) ? files[path] : undefined,
    listDir: (path) => {
      const names = directories.get(path);
      return names ? [...names].sort() : undefined;
    },
  };
}

// ----- Config parser: comments -------------------------------------------------

/**
 * Removes `;` comments and `;-- ... --;` block comments (which may span lines and nest) the way
 * Asterisk does; `\;` stays as a literal `;`. Returns one trimmed string per physical line, so
 * line numbers are kept, and the line where an unclosed block comment starts.
 */
export function stripComments(text: string): { lines: string[]; unclosedBlockLine?: number } {
  const lines: string[] = [];
  let depth = 0;
  let openedAt = 0;
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    let kept = "";
    let scanFrom = 0; // just after the latest ";--", so that ";--;" does not close itself
    for (let i = 0; i < raw.length; i++) {
      const char = raw[i];
      const opensBlock = char === ";" && raw.startsWith("--", i + 1) && raw[i + 3] !== "-";
      if (depth === 0) {
        if (char === "\\" && raw[i + 1] === ";") {
          kept += ";";
          i++;
        } else if (opensBlock) {
          depth = 1;
          openedAt = index + 1;
          i += 2;
          scanFrom = i + 1;
        } else if (char === ";") {
          break;
        } else {
          kept += char;
        }
      } else if (char === ";") {
        const closesBlock = i - 2 >= scanFrom && raw[i - 1] === "-" && raw[i - 2] === "-";
        if (closesBlock) {
          depth--;
        } else if (opensBlock) {
          depth++;
          i += 2;
          scanFrom = i + 1;
        }
      }
    }
    lines.push(kept.trim());
  }
  return depth > 0 ? { lines, unclosedBlockLine: openedAt } : { lines };
}

// ----- Config parser: includes --------------------------------------------------

/** A comment-free, non-empty line of configuration and where it came from. */
export type ConfigLine = { file: string; line: number; text: string };

type IncludeState = {
  configDir: string;
  source: ConfigSource;
  problems: AuditFinding[];
  /** Absolute paths of the files being read, outermost first: how cycles are seen. */
  stack: string[];
};

const MAX_INCLUDE_DEPTH = 20;

/** True when a path contains glob characters (`*`, `?`, `[`). */
function hasGlob(path: string): boolean {
  return /[*?[]/.test(path);
}

/** Matches one path component against a glob with `*`, `?` and `[...]`; like glob(3), `*` skips dot files. */
export function globMatch(pattern: string, name: string): boolean {
  if (name.startsWith(".") && !pattern.startsWith(".")) return false;
  return globMatchFrom(pattern, 0, name, 0);
}

function globMatchFrom(pattern: string, p: number, name: string, n: number): boolean {
  while (p < pattern.length) {
    const char = pattern[p];
    if (char === "*") {
      for (let rest = n; rest <= name.length; rest++) {
        if (globMatchFrom(pattern, p + 1, name, rest)) return true;
      }
      return false;
    }
    if (n >= name.length) return false;
    const classEnd = char === "[" ? pattern.indexOf("]", p + 2) : -1;
    if (classEnd > 0) {
      if (!charInClass(pattern.slice(p + 1, classEnd), name[n])) return false;
      p = classEnd + 1;
    } else {
      if (char !== "?" && char !== name[n]) return false;
      p++;
    }
    n++;
  }
  return n === name.length;
}

function charInClass(members: string, char: string): boolean {
  const negated = members.startsWith("!") || members.startsWith("^");
  const set = negated ? members.slice(1) : members;
  let found = false;
  for (let i = 0; i < set.length; i++) {
    if (set[i + 1] === "-" && i + 2 < set.length) {
      if (char >= set[i] && char <= set[i + 2]) found = true;
      i += 2;
    } else if (set[i] === char) {
      found = true;
    }
  }
  return found !== negated;
}

/** Expands an absolute path whose components may hold globs into the sorted list of matching paths. */
export function expandGlob(pattern: string, source: ConfigSource): string[] {
  let candidates = ["/"];
  for (const part of pattern.split("/").filter((part) => part !== "")) {
    const next: string[] = [];
    for (const base of candidates) {
      if (!hasGlob(part)) {
        next.push(join(base, part));
        continue;
      }
      const names = (source.listDir(base) ?? []).filter((name) => globMatch(part, name)).sort();
      for (const name of names) next.push(join(base, name));
    }
    candidates = next;
  }
  return candidates;
}

/**
 * Where an `#include` argument points: relative names are relative to the config dir, as in
 * Asterisk. An absolute path under /etc/asterisk is mapped into the config dir being audited, so
 * that auditing a copy never reads the live system's files.
 */
export function includeTarget(argument: string, configDir: string): string {
  const systemDir = "/etc/asterisk/";
  if (!isAbsolute(argument)) return join(configDir, argument);
  if (argument.startsWith(systemDir) && resolve(configDir) !== "/etc/asterisk") {
    return join(configDir, argument.slice(systemDir.length));
  }
  return argument;
}

/** How a path is shown in findings: relative to the config dir when inside it. */
function displayPath(path: string, configDir: string): string {
  const shown = relative(configDir, path);
  return shown.startsWith("..") || isAbsolute(shown) ? path : shown;
}

function appendFile(path: string, text: string, state: IncludeState, out: ConfigLine[]): void {
  const file = displayPath(path, state.configDir);
  const stripped = stripComments(text);
  if (stripped.unclosedBlockLine !== undefined) {
    state.problems.push(makeFinding(
      "info",
      "unresolved",
      { file, line: stripped.unclosedBlockLine },
      "This ;-- block comment is never closed with --;, so everything after it is ignored; close it.",
    ));
  }
  state.stack.push(path);
  for (const [index, lineText] of stripped.lines.entries()) {
    const where = { file, line: index + 1, text: lineText };
    if (lineText.startsWith("#")) handleDirective(where, state, out);
    else if (lineText !== "") out.push(where);
  }
  state.stack.pop();
}

function handleDirective(where: ConfigLine, state: IncludeState, out: ConfigLine[]): void {
  const match = /^#\s*([A-Za-z]+)\s*(.*)$/.exec(where.text);
  const directive = (match?.[1] ?? "").toLowerCase();
  const argument = (match?.[2] ?? "").trim().replace(/^["<](.*)[">]$/, "$1").trim();
  if (directive === "exec" || directive === "tryexec") {
    state.problems.push(makeFinding(
      "info",
      "unresolved",
      where,
      `#${directive} runs a program whose output sipcheck cannot see; check what it adds by hand.`,
    ));
    return;
  }
  if ((directive !== "include" && directive !== "tryinclude") || argument === "") {
    state.problems.push(makeFinding(
      "info",
      "unresolved",
      where,
      `sipcheck does not understand "${where.text}"; check this line by hand.`,
    ));
    return;
  }
  const target = includeTarget(argument, state.configDir);
  const isGlob = hasGlob(target);
  const paths = isGlob ? expandGlob(target, state.source) : [target];
  const texts = paths.map((path) => ({ path, text: state.source.readText(path) }));
  const found = texts.filter((entry) => entry.text !== undefined);
  if (found.length === 0 && directive === "include") {
    const what = isGlob ? "matches no file" : "names a file that does not exist";
    state.problems.push(makeFinding(
      "info",
      "include-missing",
      where,
      `#include "${argument}" ${what}; a failed #include can stop Asterisk from loading ` +
        `${displayPath(state.stack[0] ?? "", state.configDir)}, so this audit may not match ` +
        "what runs; fix the path or use #tryinclude.",
    ));
  }
  for (const entry of found) includeOne(entry.path, entry.text ?? "", where, state, out);
}

function includeOne(
  path: string,
  text: string,
  where: ConfigLine,
  state: IncludeState,
  out: ConfigLine[],
): void {
  if (state.stack.includes(path)) {
    const chain = [...state.stack, path].map((file) => displayPath(file, state.configDir));
    state.problems.push(makeFinding(
      "info",
      "include-cycle",
      where,
      `This include loops back to ${displayPath(path, state.configDir)} (${
        chain.join(" -> ")
      }); sipcheck read it once, remove the include that closes the loop.`,
    ));
    return;
  }
  if (state.stack.length >= MAX_INCLUDE_DEPTH) {
    state.problems.push(makeFinding(
      "info",
      "unresolved",
      where,
      `Includes are nested more than ${MAX_INCLUDE_DEPTH} deep; sipcheck stopped following them here.`,
    ));
    return;
  }
  appendFile(path, text, state, out);
}

// ----- Config parser: sections, templates, keys ----------------------------------

/** One `key = value` (or `key => value`) line, after templates and `+=` were applied. */
export type ConfigEntry = {
  /** Lower-cased key, for lookups. */
  key: string;
  /** The key as written (dialplan variable names are case-sensitive). */
  rawKey: string;
  value: string;
  file: string;
  line: number;
  /** The line as written, without comments. */
  text: string;
  /** The template this entry was copied from, if any. */
  inheritedFrom?: string;
};

/** A `[section]` with its entries; templates' entries are copied in first, as Asterisk does. */
export type ConfigSection = {
  name: string;
  file: string;
  line: number;
  /** Declared with `(!)`: a template, not a real object. */
  template: boolean;
  /** Templates inherited from, in order (later ones win for single-valued keys). */
  inherits: string[];
  entries: ConfigEntry[];
};

/** A parsed configuration file with everything it includes. */
export type ConfigFile = { name: string; sections: ConfigSection[]; problems: AuditFinding[] };

/** Splits a `[name](options)` header; the options only count when `(` follows `]` at once. */
export function parseSectionHeader(text: string): { name: string; options: string[] } | undefined {
  const close = text.indexOf("]");
  if (!text.startsWith("[") || close < 0) return undefined;
  const name = text.slice(1, close).trim();
  const after = text.slice(close + 1);
  if (!after.startsWith("(")) return { name, options: [] };
  const end = after.indexOf(")");
  const inside = end < 0 ? after.slice(1) : after.slice(1, end);
  return { name, options: inside.split(",").map((option) => option.trim()).filter(Boolean) };
}

/** Groups lines into sections, applying `(!)`, `(tpl1,tpl2)`, `(+)` and `+=` like Asterisk. */
export function buildSections(lines: ConfigLine[], problems: AuditFinding[]): ConfigSection[] {
  const sections: ConfigSection[] = [];
  const filesWithStrayLines = new Set<string>();
  let current: ConfigSection | undefined;
  for (const line of lines) {
    if (line.text.startsWith("[")) {
      current = openSection(line, sections, problems);
      if (!current) filesWithStrayLines.add(line.file); // the bad header was reported already
    } else if (current) {
      addEntry(current, line);
    } else if (!filesWithStrayLines.has(line.file)) {
      filesWithStrayLines.add(line.file);
      problems.push(makeFinding(
        "info",
        "unresolved",
        line,
        "This line is outside any [section], which makes Asterisk reject the file; " +
          "move it under a section header.",
      ));
    }
  }
  return sections;
}

function openSection(
  line: ConfigLine,
  sections: ConfigSection[],
  problems: AuditFinding[],
): ConfigSection | undefined {
  const header = parseSectionHeader(line.text);
  if (!header) {
    problems.push(makeFinding(
      "info",
      "unresolved",
      line,
      `"${line.text}" is not a valid section header; fix it.`,
    ));
    return undefined;
  }
  if (header.options.includes("+")) {
    const existing = sections.find((section) => section.name === header.name);
    if (existing) return existing;
    problems.push(makeFinding(
      "info",
      "unresolved",
      line,
      `[${header.name}](+) adds to a section that is not defined above it; define it first.`,
    ));
  }
  const section: ConfigSection = {
    name: header.name,
    file: line.file,
    line: line.line,
    template: header.options.includes("!"),
    inherits: [],
    entries: [],
  };
  for (const option of header.options) {
    if (option === "!" || option === "+") continue;
    const template = sections.find((candidate) => candidate.name === option);
    if (!template) {
      problems.push(makeFinding(
        "info",
        "unresolved",
        line,
        `[${header.name}] inherits from '${option}', which is not defined above it; ` +
          "Asterisk rejects the file, define the template first.",
      ));
      continue;
    }
    section.inherits.push(option);
    for (const entry of template.entries) {
      section.entries.push({ ...entry, inheritedFrom: entry.inheritedFrom ?? option });
    }
  }
  sections.push(section);
  return section;
}

function addEntry(section: ConfigSection, line: ConfigLine): void {
  const equals = line.text.indexOf("=");
  if (equals <= 0) return; // Asterisk ignores a line without "=" (with a warning)
  const appends = line.text[equals - 1] === "+";
  const rawKey = line.text.slice(0, appends ? equals - 1 : equals).trim();
  let rawValue = line.text.slice(equals + 1);
  if (appends) {
    const index = section.entries.findLastIndex((entry) => entry.rawKey === rawKey);
    if (index >= 0) {
      // "key += more" appends the text as written to the latest value of key.
      const previous = section.entries[index];
      section.entries[index] = {
        key: previous.key,
        rawKey,
        value: (previous.value + rawValue).trim(),
        file: line.file,
        line: line.line,
        text: line.text,
      };
      return;
    }
  } else if (rawValue.startsWith(">")) {
    rawValue = rawValue.slice(1);
  }
  section.entries.push({
    key: rawKey.toLowerCase(),
    rawKey,
    value: rawValue.trim(),
    file: line.file,
    line: line.line,
    text: line.text,
  });
}

/** Reads `name` from the config dir with everything it includes; undefined when it does not exist. */
export function loadConfigFile(
  name: string,
  configDir: string,
  source: ConfigSource,
): ConfigFile | undefined {
  const path = join(configDir, name);
  const text = source.readText(path);
  if (text === undefined) return undefined;
  const problems: AuditFinding[] = [];
  const lines: ConfigLine[] = [];
  appendFile(path, text, { configDir, source, problems, stack: [] }, lines);
  return { name, sections: buildSections(lines, problems), problems };
}

/** Parses a single configuration text (includes resolve against nothing); handy for snippets. */
export function parseConfigText(text: string, name = "test.conf"): ConfigFile {
  const configDir = "/nonexistent-sipcheck-dir";
  const file = loadConfigFile(name, configDir, memorySource({ [join(configDir, name)]: text }));
  return file ?? { name, sections: [], problems: [] };
}

// ----- Config lookups ------------------------------------------------------------

/** The latest entry for a key (Asterisk: the last one wins for single-valued settings). */
export function lastEntry(
  section: ConfigSection | undefined,
  key: string,
): ConfigEntry | undefined {
  return section?.entries.findLast((entry) => entry.key === key);
}

/** The latest value for a key. */
export function lastValue(section: ConfigSection | undefined, key: string): string | undefined {
  return lastEntry(section, key)?.value;
}

/** All sections of a file that are real objects (not templates). */
export function realSections(file: ConfigFile | undefined): ConfigSection[] {
  return (file?.sections ?? []).filter((section) => !section.template);
}

/** All sections with this name merged into one, in file order (for `[general]`). */
export function mergedSection(
  file: ConfigFile | undefined,
  name: string,
): ConfigSection | undefined {
  const matching = realSections(file).filter((section) => section.name === name);
  if (matching.length === 0) return undefined;
  return { ...matching[0], entries: matching.flatMap((section) => section.entries) };
}

/** Asterisk's ast_true(): yes, true, y, t, 1, on. */
export function isTrue(value: string | undefined): boolean {
  return ["yes", "true", "y", "t", "1", "on"].includes((value ?? "").trim().toLowerCase());
}

/** The section's `type=` in lower case, or "". */
function sectionType(section: ConfigSection): string {
  return (lastValue(section, "type") ?? "").toLowerCase();
}

// ----- Address lists (permit / deny) ---------------------------------------------

/** One `permit=` or `deny=` rule, in the order written. */
export type AclRule = { sense: "permit" | "deny"; network: string };

/** The permit/deny rules of a section, one per network (comma lists are split). */
export function aclRules(section: ConfigSection): AclRule[] {
  return section.entries
    .filter((entry) => entry.key === "permit" || entry.key === "deny")
    .flatMap((entry) =>
      entry.value.split(",").map((network) => ({
        sense: entry.key as "permit" | "deny",
        network: network.trim(),
      }))
    );
}

/** True for a network that covers every address: 0.0.0.0/0, 0.0.0.0/0.0.0.0, ::/0. */
export function coversEveryAddress(network: string): boolean {
  const [address, mask] = network.trim().split("/");
  if (address.startsWith("!") || mask === undefined) return false;
  return ["0", "0.0.0.0", "::"].includes(mask.trim());
}

/**
 * Would an address that no rule names explicitly be let in? Asterisk starts from "allow", and
 * each rule that matches the address sets the result, so only rules for every address count.
 */
export function aclAllowsAnyAddress(rules: AclRule[]): boolean {
  let allowed = true;
  for (const rule of rules) {
    if (coversEveryAddress(rule.network)) allowed = rule.sense === "permit";
  }
  return allowed;
}

/** Who may connect as this section: anyone, only listed addresses, or unknown (a named `acl=`). */
export function aclExposure(section: ConfigSection): "anywhere" | "restricted" | "unknown" {
  if (lastEntry(section, "acl")) return "unknown";
  return aclAllowsAnyAddress(aclRules(section)) ? "anywhere" : "restricted";
}

// ----- Secrets ----------------------------------------------------------------------

/** A short list of the passwords that SIP scanners try first (compared case-insensitively). */
export const COMMON_SIP_PASSWORDS: readonly string[] = [
  "0000",
  "1111",
  "1234",
  "12345",
  "123456",
  "1234567",
  "12345678",
  "123456789",
  "1234567890",
  "111111",
  "000000",
  "abc123",
  "admin",
  "administrator",
  "amp111",
  "asterisk",
  "changeme",
  "default",
  "elastix",
  "freepbx",
  "guest",
  "letmein",
  "pass",
  "passw0rd",
  "password",
  "password1",
  "password123",
  "qwerty",
  "qwertyuiop",
  "secret",
  "sip",
  "test",
  "voip",
  "welcome",
];

/** Minimum length below which a secret is called weak. */
export const MIN_SECRET_LENGTH = 10;

/** Why a secret is weak (empty list: not weak by these rules). `names` are the account's names. */
export function weakSecretReasons(secret: string, names: string[]): string[] {
  if (secret === "") return ["it is empty"];
  const reasons: string[] = [];
  if (secret.length < MIN_SECRET_LENGTH) {
    reasons.push(`shorter than ${MIN_SECRET_LENGTH} characters`);
  }
  if (/^\d+$/.test(secret)) reasons.push("only digits");
  const lower = secret.toLowerCase();
  if (names.some((name) => name !== "" && name.toLowerCase() === lower)) {
    reasons.push("the same as the account name");
  }
  if (COMMON_SIP_PASSWORDS.includes(lower)) reasons.push("one of the most common passwords");
  return reasons;
}

// ----- Dialplan model ---------------------------------------------------------------

/** One priority of an extension: `exten => pattern,priority(label),App(data)`. */
export type DialplanStep = {
  context: string;
  exten: string;
  priority: number;
  label?: string;
  app: string;
  data: string;
  file: string;
  line: number;
  text: string;
};

/** An extension (literal like `100` or pattern like `_00X.`) and its priorities in order. */
export type DialplanExtension = { pattern: string; steps: DialplanStep[] };

/** An `include =>` or `switch =>` line of a context. */
export type DialplanLink = { target: string; file: string; line: number; text: string };

/** A dialplan context; sections with the same name are merged, as pbx_config does. */
export type DialplanContext = {
  name: string;
  extensions: DialplanExtension[];
  includes: DialplanLink[];
  switches: DialplanLink[];
};

/** The dialplan of extensions.conf plus its `[globals]`. */
export type Dialplan = {
  contexts: Map<string, DialplanContext>;
  globals: Map<string, string>;
  problems: AuditFinding[];
};

/** The parts of an `exten =>` value: pattern, priority, label, application and its data. */
export type ExtenLine = {
  pattern: string;
  priority: string;
  label?: string;
  app: string;
  data: string;
};

/** Splits `pattern,priority(label),App(data)`; the pattern may hold commas inside `[...]`. */
export function parseExtenLine(value: string): ExtenLine | undefined {
  let bracketDepth = 0;
  let patternEnd = -1;
  for (let i = 0; i < value.length && patternEnd < 0; i++) {
    if (value[i] === "[") bracketDepth++;
    else if (value[i] === "]") bracketDepth = Math.max(0, bracketDepth - 1);
    else if (value[i] === "," && bracketDepth === 0) patternEnd = i;
  }
  if (patternEnd < 0) return undefined;
  const pattern = value.slice(0, patternEnd).split("/")[0].trim(); // drop a "/callerid" match
  const rest = value.slice(patternEnd + 1);
  const priorityEnd = rest.indexOf(",");
  const priorityField = (priorityEnd < 0 ? rest : rest.slice(0, priorityEnd)).trim();
  const labelMatch = /^([^(]*)\(([^)]*)\)$/.exec(priorityField);
  const application = splitApplication(priorityEnd < 0 ? "" : rest.slice(priorityEnd + 1));
  const parsed: ExtenLine = {
    pattern,
    priority: (labelMatch ? labelMatch[1] : priorityField).trim(),
    ...application,
  };
  if (labelMatch) parsed.label = labelMatch[2].trim();
  return parsed;
}

/** Splits `App(data)` (or the old `App,data`) into the application name and its data. */
export function splitApplication(text: string): { app: string; data: string } {
  const trimmed = text.trim();
  const paren = trimmed.indexOf("(");
  if (paren >= 0) {
    const close = trimmed.lastIndexOf(")");
    return {
      app: trimmed.slice(0, paren).trim(),
      data: close > paren ? trimmed.slice(paren + 1, close) : trimmed.slice(paren + 1),
    };
  }
  const comma = trimmed.indexOf(",");
  if (comma >= 0) return { app: trimmed.slice(0, comma).trim(), data: trimmed.slice(comma + 1) };
  return { app: trimmed, data: "" };
}

/** Builds the dialplan from a parsed extensions.conf (an empty one when there is none). */
export function buildDialplan(config: ConfigFile | undefined): Dialplan {
  const dialplan: Dialplan = { contexts: new Map(), globals: new Map(), problems: [] };
  const extensions = new Map<string, DialplanExtension>(); // "context\0pattern" -> extension
  for (const section of realSections(config)) {
    if (section.name === "general") continue;
    if (section.name === "globals") {
      for (const entry of section.entries) dialplan.globals.set(entry.rawKey, entry.value);
      continue;
    }
    addContextSection(dialplan, section, extensions);
  }
  for (const context of dialplan.contexts.values()) {
    for (const extension of context.extensions) {
      extension.steps.sort((a, b) => a.priority - b.priority);
    }
  }
  return dialplan;
}

function addContextSection(
  dialplan: Dialplan,
  section: ConfigSection,
  extensions: Map<string, DialplanExtension>,
): void {
  const context = dialplan.contexts.get(section.name) ??
    { name: section.name, extensions: [], includes: [], switches: [] };
  dialplan.contexts.set(section.name, context);
  let lastPattern: string | undefined;
  let lastPriority = 0;
  for (const entry of section.entries) {
    const link = { target: entry.value, file: entry.file, line: entry.line, text: entry.text };
    if (entry.key === "include") {
      context.includes.push({ ...link, target: entry.value.split(/[,|]/)[0].trim() });
    } else if (["switch", "lswitch", "eswitch"].includes(entry.key)) {
      context.switches.push(link);
    } else if (entry.key === "exten" || entry.key === "same") {
      if (entry.key === "same" && lastPattern === undefined) {
        dialplan.problems.push(makeFinding(
          "info",
          "unresolved",
          entry,
          "same => has no exten => line before it in this context; Asterisk ignores it.",
        ));
        continue;
      }
      const value = entry.key === "same" ? `${lastPattern},${entry.value}` : entry.value;
      const parsed = parseExtenLine(value);
      if (!parsed) continue;
      lastPattern = parsed.pattern;
      if (parsed.priority.toLowerCase() === "hint") continue;
      lastPriority = priorityNumber(parsed.priority, lastPriority);
      addStep(context, parsed, lastPriority, entry, extensions);
    }
  }
}

function priorityNumber(priority: string, lastPriority: number): number {
  if (/^\d+$/.test(priority)) return Number(priority);
  if (priority === "s") return lastPriority;
  const plus = /^n\+(\d+)$/.exec(priority);
  return plus ? lastPriority + Number(plus[1]) : lastPriority + 1;
}

function addStep(
  context: DialplanContext,
  parsed: ExtenLine,
  priority: number,
  entry: ConfigEntry,
  extensions: Map<string, DialplanExtension>,
): void {
  const key = `${context.name}\0${parsed.pattern}`;
  let extension = extensions.get(key);
  if (!extension) {
    extension = { pattern: parsed.pattern, steps: [] };
    extensions.set(key, extension);
    context.extensions.push(extension);
  }
  const step: DialplanStep = {
    context: context.name,
    exten: parsed.pattern,
    priority,
    app: parsed.app,
    data: parsed.data,
    file: entry.file,
    line: entry.line,
    text: entry.text,
  };
  if (parsed.label) step.label = parsed.label;
  extension.steps.push(step);
}

/** Does an extension pattern (`_NXXNXXXXXX`, `_00X.`, `_[1-5]!`, or a literal) match a number? */
export function extensionMatches(pattern: string, exten: string): boolean {
  if (!pattern.startsWith("_")) return pattern.replaceAll("-", "") === exten.replaceAll("-", "");
  const body = pattern.slice(1);
  let e = 0;
  for (let p = 0; p < body.length; p++) {
    const char = body[p].toUpperCase();
    if (char === "-") continue; // dashes are only for readability, as in _1-800-NXXXXXX
    if (char === "!") return true;
    if (char === ".") return e < exten.length;
    if (e >= exten.length) return false;
    const digit = exten[e];
    if (char === "X" && !/[0-9]/.test(digit)) return false;
    if (char === "Z" && !/[1-9]/.test(digit)) return false;
    if (char === "N" && !/[2-9]/.test(digit)) return false;
    if (char === "[") {
      const close = body.indexOf("]", p);
      if (close < 0 || !charInClass(body.slice(p + 1, close), digit)) return false;
      p = close;
    } else if (!"XZN".includes(char) && body[p] !== digit) {
      return false;
    }
    e++;
  }
  return e === exten.length;
}

// ----- Dialplan values ---------------------------------------------------------------

/**
 * Stands for digits the caller chose (the dialed number) inside an expanded string. Anything
 * computed from it (`${EXTEN:1}`, `${FILTER(0-9,${EXTEN})}`) is still the caller's choice.
 */
export const CALLER_DIGITS = "\u0001";

/** Splits application data on top-level commas (not inside (), [], {} or quotes); `\,` escapes. */
export function splitArgs(data: string): string[] {
  const args: string[] = [];
  let current = "";
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < data.length; i++) {
    const char = data[i];
    if (char === "\\" && i + 1 < data.length) {
      current += data[i + 1];
      i++;
      continue;
    }
    if (char === '"') quoted = !quoted;
    else if (!quoted && "([{".includes(char)) depth++;
    else if (!quoted && ")]}".includes(char)) depth = Math.max(0, depth - 1);
    else if (!quoted && depth === 0 && char === ",") {
      args.push(current.trim());
      current = "";
      continue;
    }
    current += char;
  }
  args.push(current.trim());
  return args;
}

/** Index of the first `char` outside (), [], {} and quotes, or -1. */
function indexOfTopLevel(text: string, char: string, from = 0): number {
  let depth = 0;
  let quoted = false;
  for (let i = from; i < text.length; i++) {
    const current = text[i];
    if (current === "\\") {
      i++;
    } else if (current === '"') {
      quoted = !quoted;
    } else if (!quoted && depth === 0 && current === char) {
      return i;
    } else if (!quoted && "([{".includes(current)) {
      depth++;
    } else if (!quoted && ")]}".includes(current)) {
      depth = Math.max(0, depth - 1);
    }
  }
  return -1;
}

/** True while a string still holds a `${...}` or `$[...]` that could not be resolved. */
export function isUnresolved(text: string): boolean {
  return text.includes("${") || text.includes("$[");
}

/**
 * Expands `${VAR}`, `${VAR:offset:length}` and simple `$[a = b]` with `lookup`. Anything built
 * from {@link CALLER_DIGITS} becomes CALLER_DIGITS; what cannot be resolved is left as written.
 */
export function expandVariables(
  text: string,
  lookup: (name: string) => string | undefined,
): string {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const opener = text.startsWith("${", i) ? "{" : text.startsWith("$[", i) ? "[" : undefined;
    const close = opener ? matchingClose(text, i + 1) : -1;
    if (!opener || close < 0) {
      out += text[i];
      i++;
      continue;
    }
    const inner = expandVariables(text.slice(i + 2, close), lookup);
    out += opener === "{" ? evaluateVariable(inner, lookup) : evaluateExpression(inner);
    i = close + 1;
  }
  return out;
}

function matchingClose(text: string, openIndex: number): number {
  const open = text[openIndex];
  const close = open === "{" ? "}" : "]";
  let depth = 0;
  for (let i = openIndex; i < text.length; i++) {
    if (text[i] === open) depth++;
    else if (text[i] === close && --depth === 0) return i;
  }
  return -1;
}

function evaluateVariable(inner: string, lookup: (name: string) => string | undefined): string {
  if (inner.includes(CALLER_DIGITS)) return CALLER_DIGITS;
  const match = /^([A-Za-z_][A-Za-z0-9_]*)(?::(-?\d+)(?::(-?\d+))?)?$/.exec(inner);
  const value = match ? lookup(match[1]) : undefined;
  if (!match || value === undefined) return "${" + inner + "}";
  if (value.includes(CALLER_DIGITS)) return CALLER_DIGITS;
  if (match[2] === undefined) return value;
  if (isUnresolved(value)) return "${" + inner + "}";
  return asteriskSubstring(
    value,
    Number(match[2]),
    match[3] === undefined ? undefined : Number(match[3]),
  );
}

/** Asterisk's `${VAR:offset:length}`: negative offset counts from the end, negative length trims. */
function asteriskSubstring(value: string, offset: number, length?: number): string {
  const start = offset < 0 ? Math.max(0, value.length + offset) : Math.min(offset, value.length);
  if (length === undefined) return value.slice(start);
  const end = length < 0 ? Math.max(start, value.length + length) : start + length;
  return value.slice(start, end);
}

function evaluateExpression(inner: string): string {
  if (inner.includes(CALLER_DIGITS)) return CALLER_DIGITS;
  const comparison = /^\s*("[^"]*"|[^\s"=!<>&|]*)\s*(!=|==|=)\s*("[^"]*"|[^\s"=!<>&|]*)\s*$/.exec(
    inner,
  );
  if (!comparison || isUnresolved(inner)) return "$[" + inner + "]";
  const left = comparison[1].replace(/^"(.*)"$/, "$1");
  const right = comparison[3].replace(/^"(.*)"$/, "$1");
  const numeric = /^-?\d+$/.test(left) && /^-?\d+$/.test(right);
  const equal = numeric ? Number(left) === Number(right) : left === right;
  return (comparison[2] === "!=" ? !equal : equal) ? "1" : "0";
}

/** How Asterisk reads a condition: true, false, or undefined when it cannot be known. */
export function conditionValue(expanded: string): boolean | undefined {
  const text = expanded.trim();
  if (isUnresolved(text) || text.includes(CALLER_DIGITS)) return undefined;
  if (text === "") return false;
  return /^-?\d+$/.test(text) ? Number(text) !== 0 : true;
}

/** What a Dial() destination like `SIP/${EXTEN}@trunk` is, once its variables are expanded. */
export type DialTarget =
  | { kind: "trunk" | "other" | "unknown" }
  | { kind: "local"; exten: string; context: string };

const VOIP_TECHS = new Set(["SIP", "PJSIP", "IAX2", "IAX", "H323", "OOH323", "MOTIF"]);
const PSTN_TECHS = new Set(["DAHDI", "ZAP", "DGV", "MISDN", "CAPI", "MOBILE", "SS7"]);

/**
 * Classifies one expanded Dial() destination: "trunk" when the caller's digits go out through a
 * trunk (`SIP/…@host`, `PJSIP/…@trunk`, `SIP/peer/…`, `DAHDI/g0/…`), "local" for `Local/x@ctx`,
 * "unknown" when variables hide the answer, and "other" for phones and fixed numbers.
 */
export function classifyDialDestination(destination: string): DialTarget {
  const slash = destination.indexOf("/");
  if (slash < 0) return { kind: isUnresolved(destination) ? "unknown" : "other" };
  const tech = destination.slice(0, slash).trim().toUpperCase();
  const resource = destination.slice(slash + 1).trim();
  if (isUnresolved(tech)) return { kind: "unknown" };
  if (tech === "LOCAL") {
    const at = resource.indexOf("@");
    if (at < 0) return { kind: "other" };
    const context = resource.slice(at + 1).split("/")[0];
    return { kind: "local", exten: resource.slice(0, at), context };
  }
  const trunkLike = PSTN_TECHS.has(tech) || (VOIP_TECHS.has(tech) && /[@/]/.test(resource));
  if (resource.includes(CALLER_DIGITS)) return { kind: trunkLike ? "trunk" : "other" };
  if ((VOIP_TECHS.has(tech) || PSTN_TECHS.has(tech)) && isUnresolved(resource)) {
    return { kind: "unknown" };
  }
  return { kind: "other" };
}

// ----- Dialplan walk: what an unauthenticated caller can reach ----------------------

/** Something a caller reached: a dial-out to a trunk, or a place sipcheck cannot see through. */
export type DialplanReach = {
  kind: "dial-out" | "unknown";
  /** An Authenticate(), VMAuthenticate() or DISA password stood on the way. */
  guarded: boolean;
  /** For dial-outs the application call; for unknowns, why it is unknown. */
  what: string;
  file: string;
  line: number;
  /** Steps from the entry point, "file:line [context] text". */
  chain: string[];
};

type WalkVisit = {
  context: string;
  exten: string;
  priority?: string;
  vars: Map<string, string>;
  chain: string[];
  guarded: boolean;
};

type DialplanWalk = {
  dialplan: Dialplan;
  queue: WalkVisit[];
  /** Records a reach; `target` ("file:line|target") lets a later resolution cancel an unknown. */
  report(reach: DialplanReach, target?: string): void;
  /** Targets ("file:line|target") that some path resolved: unknowns there are dropped. */
  resolved: Set<string>;
};

type ExtensionRun = {
  walk: DialplanWalk;
  context: string;
  exten: string;
  steps: DialplanStep[];
  vars: Map<string, string>;
  chain: string[];
};

type StepBranch = { index: number; guarded: boolean };

type JumpTarget = { context?: string; exten?: string; priority: string };

const MAX_VISITS = 50_000;
const TERMINATING_APPS = new Set(["hangup", "return", "macroexit", "busy", "congestion"]);
const AGI_APPS = new Set(["agi", "eagi", "deadagi", "fastagi"]);

/**
 * Walks the dialplan from `entryContext` as a caller who can dial any number, following
 * includes, Goto/GotoIf, Gosub, Macro, Dial(Local/...) and DISA, and returns every dial-out
 * (caller-chosen digits sent to a trunk) and every place it could not see through, shortest
 * chains first. `entryStep` is the first element of each chain (where the caller comes in).
 * After `maxVisits` visits the walk stops and says so with an "unknown" reach.
 */
export function findDialOuts(
  dialplan: Dialplan,
  entryContext: string,
  entryStep: string,
  maxVisits = MAX_VISITS,
): DialplanReach[] {
  const reaches: DialplanReach[] = [];
  const unknownTargets = new Map<DialplanReach, string>();
  const reported = new Set<string>();
  const walk: DialplanWalk = {
    dialplan,
    queue: [{
      context: entryContext,
      exten: CALLER_DIGITS,
      vars: new Map(),
      chain: [entryStep],
      guarded: false,
    }],
    resolved: new Set(),
    report(reach, target) {
      const key = `${reach.kind}|${reach.guarded}|${reach.file}:${reach.line}|${target ?? ""}`;
      if (reported.has(key)) return;
      reported.add(key);
      reaches.push(reach);
      if (target !== undefined) unknownTargets.set(reach, target);
    },
  };
  const seen = new Set<string>();
  let next = 0;
  while (next < walk.queue.length && seen.size < maxVisits) {
    const visit = walk.queue[next++];
    const key = visitKey(visit);
    if (seen.has(key)) continue;
    seen.add(key);
    visitContext(visit, walk);
  }
  const leftOver = walk.queue[next];
  if (leftOver) {
    reaches.push({
      kind: "unknown",
      guarded: leftOver.guarded,
      what: `the dialplan is too large or loops too much: sipcheck stopped after ${maxVisits} ` +
        `steps, before '${leftOver.context}'`,
      file: "extensions.conf",
      line: 0,
      chain: leftOver.chain,
    });
  }
  // A target that one path could not resolve but another path did (a variable that is set on
  // the usual way in and unset on an odd one) is not reported as unknown.
  return reaches.filter((reach) => !walk.resolved.has(unknownTargets.get(reach) ?? ""));
}

/**
 * Two visits with the same key behave the same for this walk. Only variables that carry the
 * caller's digits or parameterise a subroutine are part of it: keying on every variable lets
 * big dialplans (FreePBX) multiply visits without finding anything new.
 */
function visitKey(visit: WalkVisit): string {
  const vars = [...visit.vars]
    .filter(([name, value]) =>
      name !== "EXTEN" && (value.includes(CALLER_DIGITS) || /^(ARG\d+|MACRO_EXTEN)$/.test(name))
    )
    .sort()
    .join(";");
  return [visit.context, visit.exten, visit.priority ?? "", visit.guarded, vars].join("|");
}

function visitContext(visit: WalkVisit, walk: DialplanWalk): void {
  const context = walk.dialplan.contexts.get(visit.context);
  if (!context) return;
  for (const extension of context.extensions) {
    const exten = extenOnArrival(extension.pattern, visit.exten);
    if (exten !== undefined) runExtension(context.name, extension, exten, visit, walk);
  }
  for (const include of context.includes) {
    walk.queue.push({
      ...visit,
      context: include.target,
      chain: [...visit.chain, describeLink(context.name, include)],
    });
  }
  for (const link of context.switches) {
    walk.report({
      kind: "unknown",
      guarded: visit.guarded,
      what: `${link.text} hands numbers to a dialplan sipcheck cannot see`,
      file: link.file,
      line: link.line,
      chain: [...visit.chain, describeLink(context.name, link)],
    });
  }
}

/**
 * What ${EXTEN} is when a call for `dialed` runs the extension `pattern`, or undefined when it
 * does not match. `dialed` may hold the caller's digits (any extension can be reached) or an
 * unresolved variable (every literal extension that fits around it, and every pattern).
 */
function extenOnArrival(pattern: string, dialed: string): string | undefined {
  const isPattern = pattern.startsWith("_");
  if (dialed.includes(CALLER_DIGITS)) return isPattern ? dialed : pattern;
  if (isUnresolved(dialed)) {
    if (isPattern) return dialed;
    return templateMatches(dialed, pattern) ? pattern : undefined;
  }
  return extensionMatches(pattern, dialed) ? dialed : undefined;
}

/** Does a literal fit a text whose `${...}` / `$[...]` parts may be anything? */
function templateMatches(template: string, literal: string): boolean {
  const parts: string[] = [];
  let rest = template;
  while (rest !== "") {
    const start = rest.search(/\$[{[]/);
    if (start < 0) {
      parts.push(escapeRegExp(rest));
      break;
    }
    const close = matchingClose(rest, start + 1);
    parts.push(escapeRegExp(rest.slice(0, start)), ".*");
    rest = close < 0 ? "" : rest.slice(close + 1);
  }
  return new RegExp(`^${parts.join("")}$`).test(literal);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function runExtension(
  context: string,
  extension: DialplanExtension,
  exten: string,
  visit: WalkVisit,
  walk: DialplanWalk,
): void {
  const run: ExtensionRun = {
    walk,
    context,
    exten,
    steps: extension.steps,
    vars: new Map(visit.vars),
    chain: visit.chain,
  };
  run.vars.set("EXTEN", exten);
  const start = visit.priority === undefined ? 0 : priorityIndex(extension.steps, visit.priority);
  if (start === undefined) return;
  const pending: StepBranch[] = [{ index: start, guarded: visit.guarded }];
  const done = new Set<string>();
  while (pending.length > 0) {
    const branch = pending.pop();
    if (!branch || branch.index >= run.steps.length) continue;
    const key = `${branch.index}|${branch.guarded}`;
    if (done.has(key)) continue;
    done.add(key);
    const step = run.steps[branch.index];
    pending.push(...runApplication(run, step, step.app, step.data, branch));
  }
}

/** Index of a priority number or label in an extension, or undefined. */
function priorityIndex(steps: DialplanStep[], priority: string): number | undefined {
  const wanted = priority.trim();
  if (wanted === "" || isUnresolved(wanted)) return 0;
  const index = /^\d+$/.test(wanted)
    ? steps.findIndex((step) => step.priority === Number(wanted))
    : steps.findIndex((step) => step.label === wanted);
  return index < 0 ? undefined : index;
}

function describeStep(step: DialplanStep): string {
  return `${step.file}:${step.line} [${step.context}] ${maskDialSecrets(step.text)}`;
}

function describeLink(context: string, link: DialplanLink): string {
  return `${link.file}:${link.line} [${context}] ${link.text}`;
}

/** Hides the password in `IAX2/user:password@host` dial strings before they are shown. */
export function maskDialSecrets(text: string): string {
  return text.replace(/(IAX2?\/[^/:@\s,]+):[^@\s,]+@/gi, "$1:***@");
}

function variableLookup(run: ExtensionRun): (name: string) => string | undefined {
  const globals = run.walk.dialplan.globals;
  const lookup = (name: string, depth: number): string | undefined => {
    const local = run.vars.get(name);
    if (local !== undefined) return local;
    const global = globals.get(name);
    if (global === undefined || depth > 8) return undefined;
    return expandVariables(global, (inner) => lookup(inner, depth + 1));
  };
  return (name) => lookup(name, 0);
}

function expandInRun(run: ExtensionRun, text: string): string {
  return expandVariables(text, variableLookup(run));
}

/** Runs one application and returns the priorities of this extension that may run next. */
function runApplication(
  run: ExtensionRun,
  step: DialplanStep,
  app: string,
  data: string,
  branch: StepBranch,
): StepBranch[] {
  const next = [{ index: branch.index + 1, guarded: branch.guarded }];
  const name = app.toLowerCase();
  if (name === "set" || name === "mset") {
    const assignments = name === "set" ? [data] : splitArgs(data);
    for (const assignment of assignments) runSet(run, assignment);
    return next;
  }
  if (name === "dial") {
    followDial(run, step, data, branch.guarded);
    return next;
  }
  if (name === "goto") return followJump(run, step, gotoTarget(data), branch.guarded);
  if (name === "gotoif") {
    return chosenBranches(run, data).flatMap((target) =>
      target === "" ? next : followJump(run, step, gotoTarget(target), branch.guarded)
    );
  }
  if (name === "gosub" || name === "gosubif") {
    const targets = name === "gosub" ? [data] : chosenBranches(run, data);
    for (const target of targets.filter(Boolean)) followGosub(run, step, target, branch.guarded);
    return next;
  }
  if (name === "macro") {
    followMacro(run, step, data, branch.guarded);
    return next;
  }
  if (name === "execif") {
    return chosenBranches(run, data).flatMap((inner) => {
      if (inner === "") return next;
      const parsed = splitApplication(inner);
      return runApplication(run, step, parsed.app, parsed.data, branch);
    });
  }
  if (name === "exec") {
    const parsed = splitApplication(expandInRun(run, data));
    return runApplication(run, step, parsed.app, parsed.data, branch);
  }
  if (name === "authenticate" || name === "vmauthenticate") {
    return [{ index: branch.index + 1, guarded: true }];
  }
  if (name === "disa") {
    followDisa(run, step, data, branch.guarded);
    return [];
  }
  if (AGI_APPS.has(name) || isUnresolved(name)) {
    reportUnknown(run, step, branch.guarded, `${app}() runs code sipcheck cannot see`);
    return next;
  }
  return TERMINATING_APPS.has(name) ? [] : next;
}

function runSet(run: ExtensionRun, assignment: string): void {
  const equals = assignment.indexOf("=");
  if (equals <= 0) return;
  let name = assignment.slice(0, equals).trim();
  const global = /^GLOBAL\((.+)\)$/i.exec(name);
  if (global) name = global[1];
  name = name.replace(/^_+/, "");
  if (name.includes("(")) return; // a function such as CHANNEL(language)
  run.vars.set(name, expandInRun(run, assignment.slice(equals + 1)));
}

function followDial(run: ExtensionRun, step: DialplanStep, data: string, guarded: boolean): void {
  const written = splitArgs(data)[0] ?? "";
  const destinations = expandInRun(run, written).split("&");
  for (const destination of destinations) {
    const target = classifyDialDestination(destination);
    if (target.kind !== "unknown") run.walk.resolved.add(targetKey(step, written));
    if (target.kind === "trunk") {
      run.walk.report({
        kind: "dial-out",
        guarded,
        what: maskDialSecrets(`${step.app}(${data})`),
        file: step.file,
        line: step.line,
        chain: [...run.chain, describeStep(step)],
      });
    } else if (target.kind === "unknown") {
      reportUnknown(
        run,
        step,
        guarded,
        `${step.app}() dials a target built from variables sipcheck cannot resolve`,
        written,
      );
    } else if (target.kind === "local") {
      queueVisit(run, step, { context: target.context, exten: target.exten, priority: "1" }, {
        guarded,
      });
    }
  }
}

function reportUnknown(
  run: ExtensionRun,
  step: DialplanStep,
  guarded: boolean,
  why: string,
  target = "",
): void {
  run.walk.report({
    kind: "unknown",
    guarded,
    what: why,
    file: step.file,
    line: step.line,
    chain: [...run.chain, describeStep(step)],
  }, targetKey(step, target));
}

function targetKey(step: DialplanStep, target: string): string {
  return `${step.file}:${step.line}|${target}`;
}

/** `Goto([[context,]exten,]priority)` split into its parts. */
function gotoTarget(text: string): JumpTarget {
  const parts = splitArgs(text);
  if (parts.length >= 3) return { context: parts[0], exten: parts[1], priority: parts[2] };
  if (parts.length === 2) return { exten: parts[0], priority: parts[1] };
  return { priority: parts[0] };
}

/**
 * The branches of `cond?iftrue:iffalse` that can run: one when the condition can be worked out,
 * both otherwise. An empty string stands for "no jump, go on with the next priority".
 */
function chosenBranches(run: ExtensionRun, data: string): string[] {
  const question = indexOfTopLevel(data, "?");
  if (question < 0) return [""];
  const branches = data.slice(question + 1);
  const colon = indexOfTopLevel(branches, ":");
  const ifTrue = (colon < 0 ? branches : branches.slice(0, colon)).trim();
  const ifFalse = colon < 0 ? "" : branches.slice(colon + 1).trim();
  const condition = conditionValue(expandInRun(run, data.slice(0, question)));
  if (condition === true) return [ifTrue];
  if (condition === false) return [ifFalse];
  return [ifTrue, ifFalse];
}

/** Follows a jump: into this extension (returned as a branch) or elsewhere (queued). */
function followJump(
  run: ExtensionRun,
  step: DialplanStep,
  target: JumpTarget,
  guarded: boolean,
): StepBranch[] {
  const exten = target.exten === undefined ? run.exten : expandInRun(run, target.exten).trim();
  if (target.context === undefined && exten === run.exten) {
    const index = priorityIndex(run.steps, expandInRun(run, target.priority));
    return index === undefined ? [] : [{ index, guarded }];
  }
  queueVisit(run, step, target, { guarded });
  return [];
}

function queueVisit(
  run: ExtensionRun,
  step: DialplanStep,
  target: JumpTarget,
  options: { guarded: boolean; exten?: string; vars?: Map<string, string> },
): void {
  const context = target.context === undefined
    ? run.context
    : expandInRun(run, target.context).trim();
  const exten = options.exten ??
    (target.exten === undefined ? run.exten : expandInRun(run, target.exten).trim());
  const written = JSON.stringify(target);
  if (isUnresolved(context)) {
    const why = `${step.app}() jumps to a context sipcheck cannot work out`;
    reportUnknown(run, step, options.guarded, why, written);
    return;
  }
  run.walk.resolved.add(targetKey(step, written));
  run.walk.queue.push({
    context,
    exten,
    priority: expandInRun(run, target.priority),
    vars: new Map([...run.vars, ...(options.vars ?? [])]),
    chain: [...run.chain, describeStep(step)],
    guarded: options.guarded,
  });
}

/** `Gosub([[context,]exten,]priority(arg1,...))`: the arguments become ${ARG1}... */
function followGosub(run: ExtensionRun, step: DialplanStep, data: string, guarded: boolean): void {
  const open = indexOfTopLevel(data, "(");
  const head = open < 0 ? data : data.slice(0, open);
  const close = data.lastIndexOf(")");
  const args = open < 0 ? [] : splitArgs(data.slice(open + 1, close > open ? close : undefined));
  const target = gotoTarget(head);
  if (target.context === undefined && target.exten === undefined) return; // same extension
  queueVisit(run, step, target, { guarded, vars: argumentVars(run, args) });
}

/** `Macro(name,args)` runs extension `s` of context `macro-name` with ${ARG1}..., ${MACRO_EXTEN}. */
function followMacro(run: ExtensionRun, step: DialplanStep, data: string, guarded: boolean): void {
  const [name = "", ...args] = splitArgs(data);
  const vars = argumentVars(run, args);
  vars.set("MACRO_EXTEN", run.exten);
  vars.set("MACRO_CONTEXT", run.context);
  queueVisit(run, step, { context: `macro-${name}`, exten: "s", priority: "1" }, {
    guarded,
    vars,
  });
}

function argumentVars(run: ExtensionRun, args: string[]): Map<string, string> {
  return new Map(args.map((arg, index) => [`ARG${index + 1}`, expandInRun(run, arg)]));
}

/** `DISA(password,context)` gives a dial tone in `context`: without a password, to anyone. */
function followDisa(run: ExtensionRun, step: DialplanStep, data: string, guarded: boolean): void {
  const [password = "", context = "disa"] = splitArgs(data);
  const open = password.trim().toLowerCase() === "no-password";
  queueVisit(run, step, { context: context || "disa", exten: CALLER_DIGITS, priority: "1" }, {
    guarded: guarded || !open,
    exten: CALLER_DIGITS,
  });
}

// ----- The whole configuration ---------------------------------------------------------

/** Every file the audit reads, parsed, plus the dialplan built from extensions.conf. */
export type AsteriskConfig = {
  configDir: string;
  sip?: ConfigFile;
  pjsip?: ConfigFile;
  iax?: ConfigFile;
  extensions?: ConfigFile;
  manager?: ConfigFile;
  dialplan: Dialplan;
  /** Dialplan files sipcheck does not read (extensions.ael, extensions.lua) that exist. */
  unreadDialplans: string[];
};

/** The files `audit` reads, relative to the config dir. */
export const AUDITED_FILES = [
  "sip.conf",
  "pjsip.conf",
  "iax.conf",
  "extensions.conf",
  "manager.conf",
] as const;

/** Loads every audited file that exists (missing files are fine) and builds the dialplan. */
export function loadAsteriskConfig(configDir: string, source: ConfigSource): AsteriskConfig {
  const load = (name: string) => loadConfigFile(name, configDir, source);
  const extensions = load("extensions.conf");
  const config: AsteriskConfig = {
    configDir,
    dialplan: buildDialplan(extensions),
    unreadDialplans: ["extensions.ael", "extensions.lua"].filter((name) =>
      source.readText(join(configDir, name)) !== undefined
    ),
  };
  const sip = load("sip.conf");
  const pjsip = load("pjsip.conf");
  const iax = load("iax.conf");
  const manager = load("manager.conf");
  if (sip) config.sip = sip;
  if (pjsip) config.pjsip = pjsip;
  if (iax) config.iax = iax;
  if (extensions) config.extensions = extensions;
  if (manager) config.manager = manager;
  return config;
}

/** True when at least one audited file exists. */
export function hasAnyConfig(config: AsteriskConfig): boolean {
  return Boolean(config.sip || config.pjsip || config.iax || config.extensions || config.manager);
}

// ----- Unauthenticated entry points ------------------------------------------------------

/** A way into the dialplan without a password, and the codes and advice that go with it. */
type EntryPoint = {
  /** Sentence start: who gets in and why, e.g. "chan_sip takes calls without a password ...". */
  who: string;
  context: string;
  where: { file: string; line: number };
  chainStart: string;
  critical: AuditCode;
  warning: AuditCode;
  fix: string;
  /** Set when an address list narrows who can use this entry: never critical then. */
  restrictedBy?: string;
};

function entryFindings(entry: EntryPoint, config: AsteriskConfig): AuditFinding[] {
  const start = `${entry.who} into context '${entry.context}'`;
  if (!config.extensions) {
    return [makeFinding(
      "warning",
      entry.warning,
      entry.where,
      `${start}; extensions.conf was not found, so what they can dial is unknown; ${entry.fix}.`,
    )];
  }
  if (!config.dialplan.contexts.has(entry.context)) {
    return [makeFinding(
      "warning",
      entry.warning,
      entry.where,
      `${start}, which does not exist in extensions.conf (such calls are rejected today, ` +
        `but adding that context would open it); ${entry.fix}.`,
    )];
  }
  const reaches = findDialOuts(config.dialplan, entry.context, entry.chainStart);
  const unknowns = reaches.filter((reach) => reach.kind === "unknown").map(unknownFinding);
  const open = reaches.find((reach) => reach.kind === "dial-out" && !reach.guarded);
  const guarded = reaches.find((reach) => reach.kind === "dial-out" && reach.guarded);
  if (open && !entry.restrictedBy) {
    return [
      makeFinding(
        "critical",
        entry.critical,
        entry.where,
        `${start}, which reaches ${open.what} with a number the caller picks: anyone can make ` +
          `calls, abroad included, on your bill; ${entry.fix}, and cut the path shown.`,
        open.chain,
      ),
      ...unknowns,
    ];
  }
  const { detail, chain } = warningDetail(entry, open, guarded, unknowns.length > 0);
  return [
    makeFinding("warning", entry.warning, entry.where, `${start}, ${detail}; ${entry.fix}.`, chain),
    ...unknowns,
  ];
}

/** Why an unauthenticated entry is only a warning, and the path to show if there is one. */
function warningDetail(
  entry: EntryPoint,
  open: DialplanReach | undefined,
  guarded: DialplanReach | undefined,
  hasUnknowns: boolean,
): { detail: string; chain?: string[] } {
  if (open) {
    return {
      detail: `which reaches ${open.what} for anyone ${entry.restrictedBy} allows`,
      chain: open.chain,
    };
  }
  if (guarded) {
    return {
      detail: `which reaches ${guarded.what} behind a shared PIN only`,
      chain: guarded.chain,
    };
  }
  if (hasUnknowns) {
    return { detail: "where sipcheck found no dial-out but could not see everything (see info)" };
  }
  return { detail: "which reaches no dial-out that sipcheck can see" };
}

function unknownFinding(reach: DialplanReach): AuditFinding {
  return makeFinding(
    "info",
    "unresolved",
    reach,
    `Reachable without a password, but ${reach.what}; check by hand what it can dial.`,
    reach.chain,
  );
}

function entryStepText(where: { file: string; line: number }, text: string): string {
  return where.line > 0 ? `${where.file}:${where.line} ${text}` : `${where.file} ${text}`;
}

// ----- Checks ---------------------------------------------------------------------------

/** Problems met while reading the files: missing includes, include cycles, lines not understood. */
export function checkParseProblems(config: AsteriskConfig): AuditFinding[] {
  const files = [config.sip, config.pjsip, config.iax, config.extensions, config.manager];
  return [...files.flatMap((file) => file?.problems ?? []), ...config.dialplan.problems];
}

/** chan_sip guests (`allowguest`, default yes): where they land and whether that dials out. */
export function checkSipGuests(config: AsteriskConfig): AuditFinding[] {
  if (!config.sip) return [];
  const general = mergedSection(config.sip, "general");
  const allow = lastEntry(general, "allowguest");
  if (allow && !isTrue(allow.value)) return [];
  const contextEntry = lastEntry(general, "context");
  const context = contextEntry?.value || "default";
  const where = allow ?? { file: general?.file ?? "sip.conf", line: general?.line ?? 0 };
  const how = allow ? `allowguest=${allow.value}` : "allowguest is not set and defaults to yes";
  const chainStart = contextEntry
    ? entryStepText(contextEntry, `[general] ${contextEntry.text}`)
    : entryStepText(where, "[general] context is not set: guests land in 'default'");
  return entryFindings({
    who: `chan_sip takes calls without a password (${how})`,
    context,
    where,
    chainStart,
    critical: "guest-reaches-dialout",
    warning: "guest-allowed",
    fix: "set allowguest=no in [general] of sip.conf",
  }, config);
}

/** PJSIP endpoints that anyone is identified as: `[anonymous]`, or an identify matching every address. */
export function checkPjsipAnonymous(config: AsteriskConfig): AuditFinding[] {
  const sections = realSections(config.pjsip);
  const endpoints = sections.filter((section) => sectionType(section) === "endpoint");
  const globalAcl = pjsipGlobalAclNote(sections);
  const findings: AuditFinding[] = [];
  const anonymous = endpoints.find((endpoint) => endpoint.name === "anonymous");
  if (anonymous && !lastEntry(anonymous, "auth")) {
    findings.push(...entryFindings({
      who: "PJSIP endpoint 'anonymous' takes calls from anyone who is not identified otherwise",
      context: lastValue(anonymous, "context") || "default",
      where: anonymous,
      chainStart: entryStepText(anonymous, "[anonymous] type=endpoint (unidentified callers)"),
      critical: "anonymous-reaches-dialout",
      warning: "anonymous-endpoint",
      fix: "remove the anonymous endpoint, or point its context at one that only routes your own " +
        "numbers",
      ...entryRestriction(anonymous, globalAcl),
    }, config));
  }
  for (const identify of sections.filter((section) => sectionType(section) === "identify")) {
    findings.push(...identifyAllFindings(identify, endpoints, globalAcl, config));
  }
  return findings;
}

function identifyAllFindings(
  identify: ConfigSection,
  endpoints: ConfigSection[],
  globalAcl: string | undefined,
  config: AsteriskConfig,
): AuditFinding[] {
  const matchAll = identify.entries.find((entry) =>
    entry.key === "match" && entry.value.split(",").some(coversEveryAddress)
  );
  if (!matchAll) return [];
  const endpointName = lastValue(identify, "endpoint") ?? "";
  const endpoint = endpoints.find((candidate) => candidate.name === endpointName);
  if (!endpoint) {
    return [makeFinding(
      "info",
      "unresolved",
      matchAll,
      `identify '${identify.name}' matches every address but its endpoint '${endpointName}' is ` +
        "not defined in pjsip.conf; check where it comes from.",
    )];
  }
  if (lastEntry(endpoint, "auth") || endpoint.name === "anonymous") return [];
  return entryFindings({
    who: `PJSIP endpoint '${endpoint.name}' takes calls from any address without a password ` +
      `(identify '${identify.name}' has match=${matchAll.value} and the endpoint has no auth=)`,
    context: lastValue(endpoint, "context") || "default",
    where: matchAll,
    chainStart: entryStepText(matchAll, `[${identify.name}] ${matchAll.text}`),
    critical: "anonymous-reaches-dialout",
    warning: "anonymous-endpoint",
    fix: "narrow match= to your provider's addresses, or add auth= to the endpoint",
    ...entryRestriction(endpoint, globalAcl),
  }, config);
}

/** A PJSIP `type=acl` section that keeps out unknown addresses, described; else undefined. */
function pjsipGlobalAclNote(sections: ConfigSection[]): string | undefined {
  const acl = sections.find((section) =>
    sectionType(section) === "acl" && aclExposure(section) !== "anywhere"
  );
  return acl ? `the [${acl.name}] type=acl section` : undefined;
}

function entryRestriction(
  section: ConfigSection,
  globalAcl: string | undefined,
): { restrictedBy?: string } {
  const exposure = aclExposure(section);
  if (exposure === "restricted") return { restrictedBy: "its permit= list" };
  if (exposure === "unknown") return { restrictedBy: `its acl=${lastValue(section, "acl")}` };
  return globalAcl ? { restrictedBy: globalAcl } : {};
}

/**
 * Accounts that need no password: chan_sip friends/users (or dynamic peers) and IAX2 users with
 * no secret, and PJSIP endpoints without auth= that are identified by username; only when no
 * address list narrows who can use them.
 */
export function checkMissingSecrets(config: AsteriskConfig): AuditFinding[] {
  const sipDefault = lastValue(mergedSection(config.sip, "general"), "context") || "default";
  return [
    ...realSections(config.sip).flatMap((peer) => sipPeerWithoutSecret(peer, sipDefault, config)),
    ...realSections(config.iax).flatMap((user) => iaxUserWithoutSecret(user, config)),
    ...pjsipEndpointsWithoutAuth(config),
  ];
}

function sipPeerWithoutSecret(
  peer: ConfigSection,
  defaultContext: string,
  config: AsteriskConfig,
): AuditFinding[] {
  const type = sectionType(peer);
  const dynamic = (lastValue(peer, "host") ?? "").toLowerCase() === "dynamic";
  const takesCalls = type === "friend" || type === "user" || (type === "peer" && dynamic);
  if (peer.name === "general" || !takesCalls) return [];
  if (lastEntry(peer, "secret") || lastEntry(peer, "md5secret")) return [];
  if (aclExposure(peer) !== "anywhere") return [];
  return entryFindings({
    who: `chan_sip ${type} '${peer.name}' has no secret and no permit= list, so anyone can ` +
      "register or call as it",
    context: lastValue(peer, "context") || defaultContext,
    where: peer,
    chainStart: entryStepText(peer, `[${peer.name}] type=${type}, no secret`),
    critical: "no-secret-reaches-dialout",
    warning: "no-secret",
    fix: "give it a long random secret (and deny/permit lines), or remove it",
  }, config);
}

function iaxUserWithoutSecret(user: ConfigSection, config: AsteriskConfig): AuditFinding[] {
  const type = sectionType(user);
  if (user.name === "general" || (type !== "user" && type !== "friend")) return [];
  const secretKeys = ["secret", "md5secret", "dbsecret", "inkeys"];
  if (secretKeys.some((key) => lastEntry(user, key))) return [];
  if (aclExposure(user) !== "anywhere") return [];
  const contexts = user.entries.filter((entry) => entry.key === "context").map((e) => e.value);
  return (contexts.length > 0 ? contexts : ["default"]).flatMap((context) =>
    entryFindings({
      who:
        `IAX2 ${type} '${user.name}' has no secret and no permit= list, so anyone can call as it`,
      context,
      where: user,
      chainStart: entryStepText(user, `[${user.name}] type=${type}, no secret`),
      critical: "no-secret-reaches-dialout",
      warning: "no-secret",
      fix: "add a long random secret, or remove the user if you do not want IAX2 guests",
    }, config)
  );
}

function pjsipEndpointsWithoutAuth(config: AsteriskConfig): AuditFinding[] {
  const sections = realSections(config.pjsip);
  const globalAcl = pjsipGlobalAclNote(sections);
  return sections.flatMap((endpoint) => {
    if (sectionType(endpoint) !== "endpoint" || endpoint.name === "anonymous") return [];
    if (lastEntry(endpoint, "auth") || globalAcl || aclExposure(endpoint) !== "anywhere") return [];
    const identifyBy = (lastValue(endpoint, "identify_by") ?? "username,ip").toLowerCase();
    if (!identifyBy.split(",").some((method) => method.trim().endsWith("username"))) return [];
    return entryFindings({
      who: `PJSIP endpoint '${endpoint.name}' has no auth= and is identified by username, so ` +
        `anyone who sends From: ${endpoint.name} gets in`,
      context: lastValue(endpoint, "context") || "default",
      where: endpoint,
      chainStart: entryStepText(endpoint, `[${endpoint.name}] type=endpoint, no auth=`),
      critical: "no-secret-reaches-dialout",
      warning: "no-secret",
      fix: "add auth=, or for a trunk set identify_by=ip with an identify for its addresses",
    }, config);
  });
}

/** chan_sip `alwaysauthreject=no` lets scanners tell which accounts exist. */
export function checkAlwaysAuthReject(config: AsteriskConfig): AuditFinding[] {
  const setting = lastEntry(mergedSection(config.sip, "general"), "alwaysauthreject");
  if (!setting || isTrue(setting.value)) return [];
  return [makeFinding(
    "warning",
    "alwaysauthreject-off",
    setting,
    `alwaysauthreject=${setting.value} makes chan_sip answer differently for accounts that ` +
      "exist, so scanners list your extensions before guessing their passwords; set " +
      "alwaysauthreject=yes.",
  )];
}

/** chan_sip peers with `insecure=invite` (calls taken without a password) and no permit= list. */
export function checkInsecureInvite(config: AsteriskConfig): AuditFinding[] {
  return realSections(config.sip).flatMap((peer) => {
    const insecure = lastEntry(peer, "insecure");
    const values = (insecure?.value ?? "").toLowerCase().split(",").map((value) => value.trim());
    if (!insecure || !(values.includes("invite") || values.includes("very"))) return [];
    if (aclExposure(peer) !== "anywhere") return [];
    return [makeFinding(
      "warning",
      "insecure-invite",
      insecure,
      `Peer '${peer.name}' has insecure=${insecure.value} and no permit= list, so INVITEs that ` +
        "match it are taken without a password; add deny=0.0.0.0/0.0.0.0 and " +
        "permit=<your provider's address>, or drop insecure=invite.",
    )];
  });
}

/** Weak `secret=` (sip.conf, iax.conf) and `password=` (pjsip.conf auth sections). */
export function checkWeakSecrets(config: AsteriskConfig): AuditFinding[] {
  const accounts = [
    ...channelSecrets(config.sip, "chan_sip"),
    ...channelSecrets(config.iax, "IAX2"),
    ...pjsipSecrets(config.pjsip),
  ];
  const seen = new Set<string>();
  return accounts.flatMap((account) => {
    const reasons = weakSecretReasons(account.secret.value, account.names);
    const key = `${account.secret.file}:${account.secret.line}`;
    if (reasons.length === 0 || seen.has(key)) return [];
    seen.add(key);
    const from = account.secret.inheritedFrom
      ? ` (set in template '${account.secret.inheritedFrom}')`
      : "";
    return [makeFinding(
      "warning",
      "weak-secret",
      account.secret,
      `${account.label} has a weak ${account.secret.key}${from}: ${reasons.join(", ")}; ` +
        "scanners guess such passwords in minutes, use a random one of 16 characters or more.",
    )];
  });
}

type SecretAccount = { label: string; secret: ConfigEntry; names: string[] };

function channelSecrets(file: ConfigFile | undefined, channel: string): SecretAccount[] {
  return realSections(file).flatMap((section) => {
    const secret = lastEntry(section, "secret");
    if (section.name === "general" || !secret) return [];
    const names = [section.name, lastValue(section, "username"), lastValue(section, "defaultuser")];
    return [{
      label: `${channel} ${sectionType(section) || "account"} '${section.name}'`,
      secret,
      names: names.filter((name): name is string => name !== undefined),
    }];
  });
}

function pjsipSecrets(file: ConfigFile | undefined): SecretAccount[] {
  const sections = realSections(file);
  return sections.flatMap((auth) => {
    const password = lastEntry(auth, "password");
    if (sectionType(auth) !== "auth" || !password) return [];
    if ((lastValue(auth, "auth_type") ?? "userpass").toLowerCase() === "md5") return [];
    const users = sections
      .filter((endpoint) => sectionType(endpoint) === "endpoint")
      .filter((endpoint) =>
        [lastValue(endpoint, "auth"), lastValue(endpoint, "outbound_auth")].includes(auth.name)
      )
      .map((endpoint) => endpoint.name);
    const username = lastValue(auth, "username");
    return [{
      label: `PJSIP auth '${auth.name}'`,
      secret: password,
      names: [auth.name, ...users, ...(username === undefined ? [] : [username])],
    }];
  });
}

/** manager.conf: AMI users that anyone can try (no permit= list), and their weak secrets. */
export function checkAmi(config: AsteriskConfig): AuditFinding[] {
  const general = mergedSection(config.manager, "general");
  if (!config.manager || !isTrue(lastValue(general, "enabled"))) return [];
  const listening = [lastValue(general, "bindaddr") ?? "0.0.0.0"];
  if (isTrue(lastValue(general, "tlsenable"))) {
    listening.push(lastValue(general, "tlsbindaddr") ?? "0.0.0.0");
  }
  const exposedOn = listening.filter((address) => !isLoopback(address));
  return realSections(config.manager).flatMap((user) => {
    const secret = lastEntry(user, "secret");
    if (user.name === "general" || !secret) return [];
    const reasons = weakSecretReasons(secret.value, [user.name]);
    const open = exposedOn.length > 0 && aclExposure(user) === "anywhere";
    const reach = `AMI user '${user.name}' can log in from any address (manager listens on ` +
      `${exposedOn.join(" and ")} and ${describeAcl(user)})`;
    if (open && reasons.length > 0) {
      return [makeFinding(
        "critical",
        "ami-open-weak-secret",
        secret,
        `${reach} and its secret is weak (${reasons.join(", ")}): whoever guesses it controls ` +
          "the PBX and can place calls; set bindaddr=127.0.0.1 or deny=0.0.0.0/0.0.0.0 with " +
          "permit=<admin hosts>, and a random secret of 16 characters or more.",
      )];
    }
    if (open) {
      return [makeFinding(
        "warning",
        "ami-open-permit",
        user,
        `${reach}; add deny=0.0.0.0/0.0.0.0 and permit=<the hosts that need AMI>, or set ` +
          "bindaddr=127.0.0.1.",
      )];
    }
    if (reasons.length === 0) return [];
    return [makeFinding(
      "warning",
      "weak-secret",
      secret,
      `AMI user '${user.name}' has a weak secret: ${reasons.join(", ")}; anyone on an allowed ` +
        "address can guess it, use a random one of 16 characters or more.",
    )];
  });
}

function isLoopback(address: string): boolean {
  const host = address.trim().replace(/^\[([^\]]*)\].*$/, "$1").replace(/^([\d.]+):\d+$/, "$1");
  return host.startsWith("127.") || host === "::1" || host.toLowerCase() === "localhost";
}

function describeAcl(section: ConfigSection): string {
  return aclRules(section).length === 0
    ? "it has no deny/permit lines"
    : "its deny/permit lines let every address in";
}

/** `Authenticate(1234)` and `DISA(1234,...)`: one PIN shared by everyone. */
export function checkSharedPins(config: AsteriskConfig): AuditFinding[] {
  const findings: AuditFinding[] = [];
  for (const context of config.dialplan.contexts.values()) {
    for (const step of context.extensions.flatMap((extension) => extension.steps)) {
      const app = step.app.toLowerCase();
      if (app !== "authenticate" && app !== "disa") continue;
      const pin = splitArgs(step.data)[0] ?? "";
      const literal = pin !== "" && !pin.startsWith("/") && !isUnresolved(pin);
      if (!literal || pin.toLowerCase() === "no-password") continue;
      findings.push(makeFinding("info", "shared-pin", step, sharedPinMessage(step, pin)));
    }
  }
  return findings;
}

function sharedPinMessage(step: DialplanStep, pin: string): string {
  const digits = /^\d+$/.test(pin);
  const kind = digits ? `${pin.length}-digit PIN` : "password";
  const guess = digits && pin.length <= 6 ? ` (at most ${10 ** pin.length} tries)` : "";
  return `${step.app}() in [${step.context}] asks every caller for the same ${kind}: it stops ` +
    `callers who do not know it, but not anyone who heard or guessed it${guess}, and no record ` +
    "says who used it; prefer per-device SIP passwords and a context only those devices reach.";
}

/** ACLs defined in acl.conf (`acl=name`) are not read: say so instead of guessing. */
export function checkNamedAcls(config: AsteriskConfig): AuditFinding[] {
  const files = [config.sip, config.pjsip, config.iax, config.manager];
  return files.flatMap((file) =>
    realSections(file).flatMap((section) => {
      const acl = lastEntry(section, "acl");
      if (!acl) return [];
      return [makeFinding(
        "info",
        "unresolved",
        acl,
        `[${section.name}] uses acl=${acl.value} from acl.conf, which sipcheck does not read, ` +
          "so it treats the section as restricted; make sure that ACL denies unknown addresses.",
      )];
    })
  );
}

/** extensions.ael and extensions.lua are out of scope: say that their dialplan was not checked. */
export function checkUnreadDialplans(config: AsteriskConfig): AuditFinding[] {
  return config.unreadDialplans.map((file) =>
    makeFinding(
      "info",
      "unresolved",
      { file, line: 0 },
      `${file} exists but sipcheck does not read it, so dial-outs defined there were not checked; ` +
        "review them by hand.",
    )
  );
}

/** Every check, in the order they run. */
export const AUDIT_CHECKS: ReadonlyArray<(config: AsteriskConfig) => AuditFinding[]> = [
  checkParseProblems,
  checkSipGuests,
  checkPjsipAnonymous,
  checkMissingSecrets,
  checkAlwaysAuthReject,
  checkInsecureInvite,
  checkWeakSecrets,
  checkAmi,
  checkSharedPins,
  checkNamedAcls,
  checkUnreadDialplans,
];

/** Runs every check and returns the findings without duplicates, most severe first. */
export function runAuditChecks(config: AsteriskConfig): AuditFinding[] {
  const seen = new Set<string>();
  const unique = AUDIT_CHECKS.flatMap((check) => check(config)).filter((item) => {
    const key = [item.code, item.file, item.line, item.message].join("|");
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  return sortFindings(unique);
}

const SEVERITY_ORDER: Record<AuditSeverity, number> = { critical: 0, warning: 1, info: 2 };

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Sorts by severity, then file, line and code. */
export function sortFindings(findings: AuditFinding[]): AuditFinding[] {
  return [...findings].sort((a, b) =>
    SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity] ||
    compareText(a.file, b.file) || a.line - b.line || compareText(a.code, b.code)
  );
}

// ----- Output -----------------------------------------------------------------------------

/** CRITICAL if any finding is critical, WARNING if any is a warning, else OK. */
export function auditStatus(findings: AuditFinding[]): AuditStatus {
  if (findings.some((item) => item.severity === "critical")) return "CRITICAL";
  if (findings.some((item) => item.severity === "warning")) return "WARNING";
  return "OK";
}

/** The monitoring-plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. */
export function auditExitCode(status: AuditStatus): number {
  return { OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 }[status];
}

/** The plugin status line, e.g. `SIPCHECK AUDIT CRITICAL - 2 critical, 1 warning`. */
export function auditStatusLine(findings: AuditFinding[]): string {
  const count = (severity: AuditSeverity) =>
    findings.filter((item) => item.severity === severity).length;
  const warnings = count("warning");
  const infos = count("info");
  const summary = `${count("critical")} critical, ${warnings} warning${warnings === 1 ? "" : "s"}` +
    (infos > 0 ? `, ${infos} info` : "");
  return `SIPCHECK AUDIT ${auditStatus(findings)} - ${summary}`;
}

/** Human output: the status line, then the findings grouped by severity. */
export function formatAuditText(findings: AuditFinding[], configDir: string): string {
  const lines = [auditStatusLine(findings), `Config: ${configDir}`];
  for (const severity of ["critical", "warning", "info"] as const) {
    const group = findings.filter((item) => item.severity === severity);
    if (group.length === 0) continue;
    lines.push("", severity.toUpperCase());
    for (const item of group) {
      const where = item.line > 0 ? `${item.file}:${item.line}` : item.file;
      lines.push(`  ${where} [${item.code}] ${item.message}`);
      for (const step of item.chain ?? []) lines.push(`      -> ${step}`);
    }
  }
  if (findings.length === 0) lines.push("", "No findings.");
  return lines.join("\n") + "\n";
}

/** JSON output: `{ status, findings: [{ severity, code, file, line, message, chain? }] }`. */
export function formatAuditJson(findings: AuditFinding[]): string {
  return JSON.stringify({ status: auditStatus(findings), findings }, null, 2) + "\n";
}

// ----- The command ---------------------------------------------------------------------------

/** Where `audit` writes; each call gets complete text, newline included. */
export type AuditIo = { stdout(s: string): void; stderr(s: string): void };

/** The usage line of the audit subcommand. */
export const AUDIT_USAGE = "usage: sipcheck audit [--config-dir DIR] [--json]";

/** The config dir used when --config-dir is not given. */
export const DEFAULT_CONFIG_DIR = "/etc/asterisk";

function firstLineOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split("\n")[0].split(". ")[0].trim();
}

/**
 * `sipcheck audit [--config-dir DIR] [--json]` (argv without the word "audit"). Returns the exit
 * code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad usage, unreadable config dir, or an
 * unexpected error). Never throws.
 */
export async function audit(argv: string[], io: AuditIo): Promise<number> {
  try {
    let options: { configDir: string; json: boolean; help: boolean };
    try {
      const { values } = parseArgs({
        args: argv,
        options: {
          "config-dir": { type: "string" },
          json: { type: "boolean" },
          help: { type: "boolean", short: "h" },
        },
        strict: true,
        allowPositionals: false,
      });
      options = {
        configDir: values["config-dir"] ?? DEFAULT_CONFIG_DIR,
        json: values.json ?? false,
        help: values.help ?? false,
      };
    } catch (error) {
      io.stderr(`sipcheck: audit: ${firstLineOf(error)} (${AUDIT_USAGE})\n`);
      return 3;
    }
    if (options.help) {
      io.stdout(`${AUDIT_USAGE}\n`);
      return 0;
    }
    if (options.configDir === "") {
      io.stderr(`sipcheck: audit: --config-dir needs a directory (${AUDIT_USAGE})\n`);
      return 3;
    }
    return await runAudit(resolve(options.configDir), options.json, io);
  } catch (error) {
    io.stderr(`sipcheck: audit: unexpected error: ${firstLineOf(error)}\n`);
    return 3;
  }
}

async function runAudit(configDir: string, json: boolean, io: AuditIo): Promise<number> {
  try {
    await readdir(configDir);
  } catch (error) {
    const code = (error as { code?: string }).code ?? firstLineOf(error);
    return printUnknownStatus(`cannot read config dir ${configDir} (${code})`, json, io);
  }
  let config: AsteriskConfig;
  try {
    config = loadAsteriskConfig(configDir, diskSource());
  } catch (error) {
    if (!(error instanceof UnreadableConfigError)) throw error;
    return printUnknownStatus(error.message, json, io);
  }
  if (!hasAnyConfig(config)) {
    return printUnknownStatus(`no ${AUDITED_FILES.join(", ")} in ${configDir}`, json, io);
  }
  const findings = runAuditChecks(config);
  io.stdout(json ? formatAuditJson(findings) : formatAuditText(findings, configDir));
  return auditExitCode(auditStatus(findings));
}

function printUnknownStatus(reason: string, json: boolean, io: AuditIo): number {
  io.stdout(
    json
      ? JSON.stringify({ status: "UNKNOWN", findings: [], error: reason }, null, 2) + "\n"
      : `SIPCHECK AUDIT UNKNOWN - ${reason}\n`,
  );
  return 3;
}

// ---------------------------------------------------------------------------------------------
// Watching: `sipcheck watch` follows the logs and bans an address as soon as it reaches the
// threshold. At start it does what a cron run does over the content it finds; then, every
// POLL_MS, it reads what was appended (fstat and positional reads: the same under Deno and Node,
// unlike fs.watch). A log whose name now points to another file (rename and create, Asterisk's
// `logger rotate`, delete and re-create) is read to its end and then for as long as it still
// grows, and the new file from its start; a log that shrank or changed under the offset read so
// far was truncated (copytruncate): the rest of its old content is read from the copy when one
// is found beside it, then the log from its start. One scanner per file, one tally for all, so a
// rotation is no amnesty. Bans that fell due in one poll go in one restore call per family.
// ---------------------------------------------------------------------------------------------

/** How often the logs are checked for new lines (ms): a ban lands at most this long, plus one
 * iptables-restore call, after its line was written. */
export const POLL_MS = 50;
/** A log renamed or deleted away is still read until it has not grown for this long (ms), so that
 * what Asterisk writes to it before it reopens its logs is counted. */
export const RETIRE_MS = 60_000;
/** A failed firewall batch is tried again after this long (ms), doubling up to RETRY_MAX_MS. */
export const RETRY_MS = 1000;
/** The longest wait between two tries of a failing firewall batch (ms). */
export const RETRY_MAX_MS = 60_000;
/** Bytes remembered before the read offset, to notice a file rewritten in place and find a copy. */
const TAIL_BYTES = 64;
/** A `--window` is kept in this many buckets (of one second at least). */
const WINDOW_BUCKETS = 60;

const DURATION_UNITS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** Parses a duration (`30s`, `10m`, `1h`, `1h30m`, `2d`; a bare number is seconds) into ms; null
 * when malformed or shorter than a second. */
export function parseDuration(text: string): number | null {
  const spelled = /^\d+$/.test(text) ? text + "s" : text;
  if (!/^(?:\d+[smhd])+$/.test(spelled)) return null;
  let ms = 0;
  for (const [, n, unit] of spelled.matchAll(/(\d+)([smhd])/g)) {
    ms += Number(n) * DURATION_UNITS[unit];
  }
  return ms >= 1000 && Number.isSafeInteger(ms) ? ms : null;
}

/** A duration in ms the way people write it: `10m`, `1h`, `90s`. */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m"]) {
    if (ms % DURATION_UNITS[unit] === 0) return `${ms / DURATION_UNITS[unit]}${unit}`;
  }
  return `${Math.round(ms / 1000)}s`;
}

/** Keeps a tally's counts to the failures seen within a sliding window. */
export interface SlidingWindow {
  /** Notes `n` failures of `ip` (already in the tally) seen at `now` (ms). */
  add(ip: string, n: number, now: number): void;
  /** Takes the failures that left the window out of the tally's counts, and forgets the
   * addresses left with none (their counts and PJSIP tries); returns those addresses. */
  expire(now: number): string[];
  /** Buckets held (one per address and bucket width with failures): memory, for tests. */
  size(): number;
}

/**
 * A sliding window of `windowMs` over `tally.counts`, like fail2ban's findtime, in buckets of
 * `windowMs / 60` (one second at least): a failure counts from when it is seen until between
 * `windowMs` and one bucket more later. Memory is one bucket per address and bucket width with
 * failures, and a queue of the same, oldest first.
 */
export function slidingWindow(tally: Tally, windowMs: number): SlidingWindow {
  const width = Math.max(1000, Math.ceil(windowMs / WINDOW_BUCKETS));
  const buckets = new Map<string, number[]>(); // per address: bucket, count, bucket, count, …
  let queue: string[] = []; // addresses in the order their buckets were opened
  let queueBuckets: number[] = [];
  let head = 0;
  return {
    add(ip, n, now) {
      const bucket = Math.floor(now / width);
      let list = buckets.get(ip);
      if (list === undefined) {
        ip = detach(ip);
        buckets.set(ip, list = []);
      }
      if (list.length && list[list.length - 2] === bucket) list[list.length - 1] += n;
      else {
        list.push(bucket, n);
        queue.push(ip);
        queueBuckets.push(bucket);
      }
    },
    expire(now) {
      const cutoff = Math.floor((now - windowMs) / width); // older buckets are out entirely
      const forgotten: string[] = [];
      for (; head < queue.length && queueBuckets[head] < cutoff; head++) {
        const ip = queue[head];
        const list = buckets.get(ip) as number[];
        const left = (tally.counts.get(ip) ?? 0) - list[1];
        list.splice(0, 2);
        if (list.length) tally.counts.set(ip, left);
        else {
          buckets.delete(ip);
          tally.counts.delete(ip);
          tally.lastTries.delete(ip);
          forgotten.push(ip);
        }
      }
      if (head > 4096 && head * 2 > queue.length) {
        queue = queue.slice(head);
        queueBuckets = queueBuckets.slice(head);
        head = 0;
      }
      return forgotten;
    },
    size: () => queue.length - head,
  };
}

/** What the watcher prints about an address that reached the threshold. */
export interface WatchEvent extends Decision {
  /** The family of the failure that brought it to the threshold. */
  family: FamilyName;
}

/** An address that reached the threshold and waits for the next batch. */
interface Due {
  failures: number;
  family: FamilyName;
}

/** One open file of a followed log: the log itself, or a file rotated away and still read. */
interface Incarnation {
  fd: number;
  dev: bigint;
  ino: bigint;
  /** Bytes read so far. */
  offset: number;
  /** The last bytes before `offset` (up to {@link TAIL_BYTES}). */
  tail: Buffer;
  scanner: Scanner;
  /** When it last grew (ms). */
  grewAt: number;
}

/** A log named on the command line and what is open of it. */
interface Followed {
  path: string;
  current: Incarnation | null;
  /** Renamed or deleted away: read until idle for {@link RETIRE_MS}. */
  retired: Incarnation[];
  /** The read error last reported, so that each is reported once. */
  reported: string | null;
  /** It could be opened once: when it goes away, that is a rotation, not an error. */
  opened: boolean;
}

/** A running watcher. */
export interface Watcher {
  /** Settles with the exit code when the watcher has stopped. */
  done: Promise<number>;
  /** Stops after one last read and batch (what SIGTERM and SIGINT do). */
  stop(reason: string): void;
  /** Checks every log again now, reporting errors anew, and rereads the firewall and this
   * host's addresses (what SIGHUP does). */
  reopen(): void;
  /** Settles after the next complete poll: what was written before has been read, and the bans
   * due have been tried. */
  polled(): Promise<void>;
  /** The counts (within the window, with `--window`). */
  tally: Tally;
  /** The window, with `--window`. */
  window: SlidingWindow | null;
}

/** Never banned: loopback, this host's addresses, and `--ignore`. */
function ignoreList(options: Options, deps: Deps): Cidr[] {
  return [
    ...IGNORE.map((text) => parseCidr(text) as Cidr),
    ...deps.hostAddresses().map((address) => parseCidr(address) as Cidr),
    ...options.ignore,
  ];
}

/** True if the bytes just before `inc.offset` in `fd` are the ones read there. */
function holdsTail(fd: number, inc: Incarnation): boolean {
  const probe = Buffer.alloc(inc.tail.length);
  return readSync(fd, probe, 0, probe.length, inc.offset - probe.length) === probe.length &&
    probe.equals(inc.tail);
}

/** Reads what was appended to `fd` since `inc.offset` into the incarnation's scanner. */
function readAppended(inc: Incarnation, fd: number, buffer: Buffer): number {
  let total = 0;
  for (;;) {
    const n = readSync(fd, buffer, 0, buffer.length, inc.offset);
    if (n === 0) return total;
    inc.scanner.write(buffer.subarray(0, n));
    inc.offset += n;
    total += n;
    inc.tail = n >= TAIL_BYTES
      ? Buffer.from(buffer.subarray(n - TAIL_BYTES, n))
      : Buffer.concat([inc.tail, buffer.subarray(0, n)]).subarray(-TAIL_BYTES);
  }
}

/**
 * After a copytruncate: finds the copy beside the log (a file whose name starts with the log's,
 * holding at the same offset the bytes read last) and reads the rest of the old content from it:
 * the lines written after the last poll and before the copy. Returns the copy's path, or null.
 */
function readCopy(path: string, inc: Incarnation, buffer: Buffer): string | null {
  if (inc.tail.length === 0) return null;
  const name = path.split("/").pop() as string;
  let names: string[];
  try {
    names = readdirSync(dirname(path));
  } catch {
    return null;
  }
  for (const other of names) {
    if (other === name || !other.startsWith(name)) continue;
    const copy = join(dirname(path), other);
    let fd: number | undefined;
    try {
      fd = openSync(copy, "r");
      const stat = fstatSync(fd, { bigint: true });
      if (!stat.isFile() || stat.ino === inc.ino || Number(stat.size) < inc.offset) continue;
      if (!holdsTail(fd, inc)) continue;
      readAppended(inc, fd, buffer);
      return copy;
    } catch {
      continue; // unreadable: not the copy we can use
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return null;
}

/** Stops reading standard input (Deno's needs its resource closed, or the process lingers). */
function closeStream(stream: AsyncIterable<Uint8Array>): void {
  try {
    (stream as { destroy?: () => void }).destroy?.();
    if (deno && stream === (process.stdin as unknown)) deno.stdin.close();
  } catch { /* already closed */ }
}

/** Why a watched log that is not a regular file is not followed. */
const NOT_FOLLOWABLE =
  'not a regular file (a pipe, FIFO, device or socket); pipe it into "sipcheck watch -" instead';

/**
 * Throws SipcheckError(66) for a log that exists and that watch cannot follow: one that is not a
 * regular file (it cannot be read again from where it was, nor polled for growth; a scan reads it
 * once to its end), or a gzip-compressed one (nothing is appended to it; a scan reads it). A log
 * that is missing or cannot be read yet is left to the watcher, which waits for it.
 */
function refuseUnfollowable(path: string): void {
  let gzip = false;
  try {
    const stat = statSync(path);
    if (stat.isDirectory()) return;
    if (!stat.isFile()) {
      throw new SipcheckError(EXIT.noInput, `cannot watch "${path}": ${NOT_FOLLOWABLE}`);
    }
    const fd = openSync(path, "r");
    try {
      gzip = isGzipFile(fd);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    if (error instanceof SipcheckError) throw error;
    return;
  }
  if (gzip) {
    throw new SipcheckError(
      EXIT.noInput,
      `cannot watch "${path}": it is gzip-compressed, and nothing is appended to it; ` +
        `scan it instead ("sipcheck ${path}")`,
    );
  }
}

/**
 * Starts watching `options.logs` (or the default log) and standard input for `-`: see the
 * section comment. Bans go through `deps.run`; events, one line each, to `deps.stdout`; errors to
 * `deps.stderr`. The caller holds the lock.
 */
export function startWatcher(options: Options, deps: Deps): Watcher {
  const tally = newTally();
  const window = options.window ? slidingWindow(tally, options.window) : null;
  const paths = options.logs.length ? options.logs.map((arg) => resolveLog(arg)) : [defaultLog()];
  for (const path of paths) if (path !== "-") refuseUnfollowable(path);
  const files = new Set<string>(); // device:inode of each log found at start
  const named = [...new Set(paths.filter((path) => path !== "-"))];
  const logs: Followed[] = named.filter((path) => !isReadAlready(path, files)).map((path) => ({
    path,
    current: null,
    retired: [],
    reported: null,
    opened: false,
  }));
  const pending = new Map<string, Due>(); // reached the threshold, not decided yet
  const decided = new Set<string>(); // reached it and decided (forgotten with the window)
  // Of those, the ones found or put in the chain, and the family that brought each there: the
  // chain is read again before every batch, and one no longer in it is banned again.
  const inChain = new Map<string, FamilyName>();
  const retry = { 4: { at: 0, delay: RETRY_MS }, 6: { at: 0, delay: RETRY_MS } };
  const buffer = Buffer.allocUnsafe(CHUNK_SIZE);
  const waiters: (() => void)[] = [];
  let ignore = ignoreList(options, deps);
  let now = performance.now();
  let bans = 0;
  let stopReason: string | null = null;
  let reopenAsked = false;
  let wake: (() => void) | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stdin: AsyncIterable<Uint8Array> | null = null;
  let finished = false;
  let refused = false; // gzip data on standard input

  /** Every counted failure: keep the window, and queue the address once it reaches the
   * threshold, with the family that brought it there. */
  const onFailure = (failure: Failure, counted: number): void => {
    const ip = failure.address as string;
    window?.add(ip, counted, now);
    const failures = tally.counts.get(ip) ?? 0;
    if (failures < options.threshold || pending.has(ip) || decided.has(ip)) return;
    pending.set(detach(ip), { failures, family: failure.family });
  };

  const newScanner = () => createScanner(tally, onFailure);

  /** Prints one line: a JSON object with `--json`, else the time and `text`. */
  function say(fields: Record<string, unknown>, text: string): void {
    const time = new Date().toISOString();
    void deps.stdout(
      options.json ? JSON.stringify({ time, ...fields }) + "\n" : `${time}  ${text}\n`,
    );
  }

  /** Prints a line that is not a ban, unless `--quiet`. */
  function notice(fields: Record<string, unknown>, text: string): void {
    if (!options.quiet) say(fields, `sipcheck: ${text}`);
  }

  function reportOnce(log: Followed, error: unknown): void {
    const why = describeFileError(error);
    if (log.reported === why) return;
    log.reported = why;
    deps.stderr(`sipcheck: cannot read "${log.path}": ${why}; trying again\n`);
  }

  function open(log: Followed): Incarnation | null {
    let fd: number | undefined;
    try {
      fd = openSync(log.path, "r");
      const stat = fstatSync(fd, { bigint: true });
      if (stat.isDirectory()) throw Object.assign(new Error("is a directory"), { code: "EISDIR" });
      log.current = {
        fd,
        dev: stat.dev,
        ino: stat.ino,
        offset: 0,
        tail: Buffer.alloc(0),
        scanner: newScanner(),
        grewAt: now,
      };
      log.reported = null;
      return log.current;
    } catch (error) {
      if (fd !== undefined) closeSync(fd);
      reportOnce(log, error);
      return null;
    }
  }

  function retire(log: Followed): void {
    const current = log.current as Incarnation;
    current.grewAt = now;
    log.retired.push(current);
    log.current = null;
  }

  /** Copytruncate: the rest of the old content from the copy, then the log from its start. */
  function restart(log: Followed, inc: Incarnation): void {
    const copy = readCopy(log.path, inc, buffer);
    inc.scanner.end();
    Object.assign(inc, { offset: 0, tail: Buffer.alloc(0), scanner: newScanner() });
    notice(
      { action: "log", log: log.path, change: "truncated", copy },
      `${log.path} was truncated (copytruncate)` +
        (copy ? `; its copy ${copy} was read to its end` : "") + "; reading it from the start",
    );
  }

  /** Reads everything new of one log, and notices rotations. */
  function pollLog(log: Followed, first: boolean): void {
    log.retired = log.retired.filter((inc) => {
      if (readAppended(inc, inc.fd, buffer) > 0) inc.grewAt = now;
      if (now - inc.grewAt < RETIRE_MS) return true;
      inc.scanner.end();
      closeSync(inc.fd);
      return false;
    });
    const current = log.current;
    if (current) {
      const size = Number(fstatSync(current.fd, { bigint: true }).size);
      if (
        size < current.offset || (size > current.offset && !holdsTail(current.fd, current))
      ) restart(log, current);
      readAppended(current, current.fd, buffer);
    }
    let stat;
    try {
      stat = statSync(log.path, { bigint: true });
    } catch (error) {
      if (log.current) {
        retire(log);
        notice(
          { action: "log", log: log.path, change: "gone" },
          `${log.path} is gone; reading what is still written to it, and waiting for it to come back`,
        );
      } else if (!log.opened) reportOnce(log, error);
      return;
    }
    if (log.current && stat.ino === log.current.ino && stat.dev === log.current.dev) return;
    if (!stat.isFile() && !stat.isDirectory()) {
      // Put in the log's place since: opening a FIFO would wait for a writer.
      reportOnce(log, new Error(NOT_FOLLOWABLE));
      return;
    }
    const replaced = log.current !== null;
    if (replaced) retire(log);
    const inc = open(log);
    if (!inc) return;
    if (!first) {
      const change = replaced ? "replaced" : log.opened ? "back" : "appeared";
      notice(
        { action: "log", log: log.path, change },
        change === "replaced"
          ? `${log.path} was replaced (rotated); reading the new file, and the old one while it grows`
          : change === "back"
          ? `${log.path} is back; reading it from the start`
          : `reading ${log.path}`,
      );
    }
    log.opened = true;
    readAppended(inc, inc.fd, buffer);
  }

  /**
   * Decides one family's due addresses and bans the new ones in one batch; throws on a firewall
   * error. The chain is read first, every time (one `iptables -S`): a rule someone else put in
   * it refuses the batch, a jump rule someone deleted is put back, and an address banned before
   * that the chain no longer drops (deleted by hand, a whole-table iptables-restore) is taken
   * out of {@link inChain} and `decided`, and banned again in this batch while its count is still
   * at the threshold (`due` gets it, so that a failed batch tries it again).
   */
  async function settle(version: IpVersion, due: [string, Due][]): Promise<WatchEvent[]> {
    const counts = new Map(
      due.map(([ip, d]) => [ip, Math.max(d.failures, tally.counts.get(ip) ?? 0)]),
    );
    const decideWith = (banned: ReadonlySet<string>) =>
      decide(counts, { threshold: options.threshold, ignore, banned, dryRun: options.dryRun });
    let decisions = decideWith(new Set());
    if (decisions.some((d) => d.action === "banned")) {
      const state = await listChainForBans(deps.run, version);
      for (const [ip, family] of inChain) {
        if (versionOf(ip) !== version || state.bans.has(ip)) continue;
        inChain.delete(ip);
        decided.delete(ip);
        const failures = tally.counts.get(ip) ?? 0;
        if (failures < options.threshold || counts.has(ip)) continue;
        counts.set(ip, failures);
        due.push([ip, { failures, family }]);
      }
      decisions = decideWith(state.bans);
      const fresh = decisions.filter((d) => d.action === "banned").map((d) => d.ip);
      if (fresh.length || jumpRules().some((jump) => !state.jumps.includes(jump))) {
        await addBans(deps.run, version, state, fresh);
        bans += fresh.length;
      }
    }
    const families = new Map(due.map(([ip, d]) => [ip, d.family]));
    return decisions.map((d) => ({ ...d, family: families.get(d.ip) as FamilyName }));
  }

  /** Tries the due addresses, one batch per family (a family whose last batch failed waits for
   * its retry time unless `force`), and prints what happened, highest count first. */
  async function flush(force: boolean): Promise<void> {
    const events: WatchEvent[] = [];
    for (const version of [4, 6] as const) {
      const due = [...pending].filter(([ip]) => versionOf(ip) === version);
      if (due.length === 0 || (!force && now < retry[version].at)) continue;
      for (const [ip] of due) pending.delete(ip);
      try {
        for (const event of await settle(version, due)) {
          events.push(event);
          if (event.action === "banned" || event.action === "already-banned") {
            inChain.set(event.ip, event.family);
          }
        }
        for (const [ip] of due) decided.add(ip);
        retry[version].delay = RETRY_MS;
      } catch (error) {
        for (const [ip, d] of due) pending.set(ip, d);
        const delay = retry[version].delay;
        retry[version] = { at: now + delay, delay: Math.min(2 * delay, RETRY_MAX_MS) };
        const message = error instanceof SipcheckError
          ? error.message
          : `unexpected error: ${describeFileError(error)}`;
        deps.stderr(
          `sipcheck: ${message}; ${plural(due.length, "ban")} ` +
            (stopReason ? "not applied\n" : `to try again in ${delay / 1000} s\n`),
        );
      }
    }
    const within = options.window ? ` in ${formatDuration(options.window)}` : "";
    for (const e of events.sort((a, b) => b.failures - a.failures)) {
      if (options.quiet && e.action !== "banned" && e.action !== "would-ban") continue;
      say(
        { action: e.action, ip: e.ip, failures: e.failures, family: e.family },
        `${ACTION_WORDS[e.action].padEnd(15)} ${e.ip}  ${plural(e.failures, "failure")}` +
          `${within} (${e.family})`,
      );
    }
  }

  /** Follows standard input until it closes; stops the watcher then if there is nothing else.
   * gzip data (its first two bytes) stops the watcher with exit 66, as a compressed file
   * refused at start does: nothing is appended to it. */
  async function followStdin(): Promise<void> {
    const scanner = newScanner();
    let head: Buffer | null = Buffer.alloc(0); // the first bytes, until there are two
    const checkHead = (): boolean => {
      if (head === null || !isGzipHead(head)) {
        if (head?.length) scanner.write(head);
        head = null;
        return true;
      }
      refused = true;
      deps.stderr(
        'sipcheck: cannot watch standard input: it is gzip-compressed; scan it instead ("sipcheck -")\n',
      );
      stop("gzip-compressed input");
      return false;
    };
    stdin = deps.stdin();
    try {
      for await (const chunk of stdin) {
        now = performance.now();
        if (head) {
          head = Buffer.concat([head, chunk]);
          if (head.length >= GZIP_MAGIC.length && !checkHead()) return;
        } else scanner.write(chunk);
        if (stopReason) return;
      }
      if (head && !checkHead()) return;
      scanner.end();
    } catch (error) {
      if (stopReason) return;
      deps.stderr(`sipcheck: cannot read standard input: ${describeFileError(error)}\n`);
    }
    if (logs.length === 0) stop("end of input");
  }

  function settings(): string {
    return `threshold ${options.threshold}` +
      (options.window ? `, window ${formatDuration(options.window)}` : "") +
      (options.dryRun ? ", dry run" : "");
  }

  /** The poll loop: read, forget what left the window, ban, sleep; until stopped. */
  async function loop(): Promise<number> {
    for (let first = true;; first = false) {
      now = performance.now();
      const last = stopReason !== null; // a stop is followed by one whole poll
      const waiting = waiters.splice(0);
      if (reopenAsked) {
        reopenAsked = false;
        decided.clear();
        inChain.clear();
        ignore = ignoreList(options, deps);
        for (const log of logs) log.reported = null;
      }
      for (const log of logs) {
        try {
          pollLog(log, first);
        } catch (error) {
          reportOnce(log, error);
        }
      }
      for (const ip of window?.expire(now) ?? []) {
        decided.delete(ip);
        inChain.delete(ip);
      }
      await flush(last);
      if (first) {
        notice(
          {
            action: "watching",
            logs: paths,
            threshold: options.threshold,
            window: options.window ? options.window / 1000 : null,
            dryRun: options.dryRun,
            lines: tally.lines,
            failures: tally.failures,
            addresses: tally.counts.size,
          },
          `watching ${paths.join(", ")} (${settings()}): ${plural(tally.lines, "line")}, ` +
            `${plural(tally.failures, "failure")} from ${tally.counts.size} ` +
            `${tally.counts.size === 1 ? "address" : "addresses"} so far`,
        );
      }
      for (const resolve of waiting) resolve();
      if (last) break;
      if (stopReason !== null) continue;
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, POLL_MS);
      });
    }
    if (refused) return EXIT.noInput;
    return pending.size && stopReason === "end of input" && !options.dryRun
      ? EXIT.unavailable
      : EXIT.ok;
  }

  /** Closes every file and standard input, and says goodbye. */
  function finish(): void {
    for (const log of logs) {
      for (const inc of [...log.retired, ...(log.current ? [log.current] : [])]) {
        try {
          closeSync(inc.fd);
        } catch { /* closed */ }
      }
      log.current = null;
      log.retired = [];
    }
    if (stdin) closeStream(stdin);
    notice(
      { action: "stopped", reason: stopReason, lines: tally.lines, failures: tally.failures, bans },
      `stopped (${stopReason}): ${plural(tally.lines, "line")}, ` +
        `${plural(tally.failures, "failure")}, ${bans} banned since the start`,
    );
    finished = true;
    for (const resolve of waiters.splice(0)) resolve();
  }

  function stop(reason: string): void {
    stopReason ??= reason;
    clearTimeout(timer);
    wake?.();
  }

  if (paths.includes("-")) void followStdin();
  const done = loop().finally(finish);
  return {
    done,
    stop,
    reopen() {
      reopenAsked = true;
      clearTimeout(timer);
      wake?.();
    },
    polled: () => finished ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve)),
    tally,
    window,
  };
}

/** The signals a watcher answers: SIGTERM and SIGINT stop it, SIGHUP reopens the logs. */
const WATCH_SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"] as const;

/** Answers one of {@link WATCH_SIGNALS}: SIGHUP reopens, the others stop. */
function answerSignal(watcher: Watcher, signal: string): void {
  if (signal === "SIGHUP") watcher.reopen();
  else watcher.stop(signal);
}

/**
 * `sipcheck watch`: runs a watcher until SIGTERM or SIGINT (then exit 0). The handlers are
 * installed before the watcher starts, since its first read of the logs is synchronous and can
 * take seconds: a signal that comes meanwhile (`systemctl reload` or `stop` just after a start)
 * would otherwise end the process with the lock left behind. Such a signal is answered once that
 * read returns: SIGTERM and SIGINT then stop the watcher after its first batch, as at any other
 * time. Signals need no Deno permission.
 */
export async function watch(options: Options, deps: Deps): Promise<number> {
  // A handler runs from the event loop, so never before startWatcher, which is synchronous, has
  // returned.
  let watcher!: Watcher;
  const handlers = WATCH_SIGNALS.map((signal) =>
    [signal, () => answerSignal(watcher, signal)] as const
  );
  for (const [signal, handler] of handlers) process.on(signal, handler);
  try {
    watcher = startWatcher(options, deps);
    return await watcher.done;
  } finally {
    for (const [signal, handler] of handlers) process.off(signal, handler);
  }
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const HELP = `sipcheck ${VERSION}: ban addresses that keep failing to log in to Asterisk

Usage:
  sipcheck.ts [options] [LOG ...]   scan LOGs, ban every address with >= ${THRESHOLD} failures
  sipcheck.ts clear [-n]             remove every rule sipcheck added, and nothing else
  sipcheck.ts list                   print the addresses sipcheck bans now
  sipcheck.ts watch [options] [LOG ...]
                                     follow LOGs, ban as soon as an address reaches it
  sipcheck.ts audit [--config-dir DIR] [--json]
                                     look for toll-fraud holes in Asterisk's configuration

LOG defaults to ${LOG_DIR}/messages (messages.log if only that exists); a bare
name is looked up in ${LOG_DIR}; "-" reads standard input. Several logs add up.

Options:
  -n, --dry-run          scan and report, change nothing (needs no root);
                         clear: say what it would remove, change nothing
  -t, --threshold N      ban at N failures instead of ${THRESHOLD} (scan, watch)
  -i, --ignore ADDR|CIDR never ban these (repeatable); loopback and this host never are
      --json             print one JSON object (list: a JSON array; watch: one per line;
                         not for clear)
  -q, --quiet            print only new bans and errors
      --window DURATION  watch: count only failures seen in the last DURATION (30s, 10m, 1h)
  -h, --help             print this help
  -V, --version          print the version

watch runs until SIGTERM or SIGINT (exit 0); SIGHUP reopens the logs.

Exit codes: 0 done, 64 usage error, 66 a log could not be read, 69 iptables missing
or failed, 75 another sipcheck holds the lock, 77 not root, 1 unexpected error.
audit: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the monitoring-plugin convention).
`;

/** The options of every command. */
const OPTIONS = {
  "dry-run": { type: "boolean", short: "n" },
  threshold: { type: "string", short: "t" },
  ignore: { type: "string", short: "i", multiple: true },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  window: { type: "string" },
} as const;

/** Commands that are not a scan. */
const COMMANDS = ["clear", "list", "watch"] as const;
type Command = "scan" | (typeof COMMANDS)[number];

/**
 * The commands each option applies to (the others take every command); any other use is a usage
 * error rather than an option silently ignored. `list` changes nothing, so it has no dry run.
 */
const OPTION_COMMANDS: Partial<Record<keyof typeof OPTIONS, readonly Command[]>> = {
  "dry-run": ["scan", "watch", "clear"],
  threshold: ["scan", "watch"],
  ignore: ["scan", "watch"],
  json: ["scan", "watch", "list"],
  window: ["watch"],
};

/** Parsed command line. */
export interface Options {
  command: Command;
  logs: string[];
  dryRun: boolean;
  threshold: number;
  ignore: Cidr[];
  json: boolean;
  quiet: boolean;
  help: boolean;
  version: boolean;
  /** `watch --window`: the sliding window in ms, or null to count since the start. */
  window: number | null;
}

/** A command as a usage message names it. */
function commandName(command: Command): string {
  return command === "scan" ? "a scan" : `"${command}"`;
}

/** Parses argv; throws SipcheckError(64) with a one-line message on bad usage. */
export function parseOptions(argv: readonly string[]): Options {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    // Node's message is three lines; for a value that starts with "-" (`-t -1`) the third says
    // how to give one, which the first alone does not.
    const lines = (error as Error).message.split("\n");
    const hint = lines.length > 2 && lines[0].endsWith("argument is ambiguous.") ? lines[2] : "";
    throw new SipcheckError(EXIT.usage, hint ? `${lines[0]} ${hint}` : lines[0]);
  }
  const { values, positionals } = parsed;
  let command: Command = "scan";
  if ((COMMANDS as readonly string[]).includes(positionals[0])) {
    command = positionals.shift() as Command;
    if (command !== "watch" && positionals.length) {
      throw new SipcheckError(
        EXIT.usage,
        `"${command}" takes no log names (got "${positionals[0]}")`,
      );
    }
  }
  if (positionals.includes("")) {
    throw new SipcheckError(EXIT.usage, 'a log name is empty (""): name a file, or "-"');
  }
  for (const [option, commands] of Object.entries(OPTION_COMMANDS)) {
    if (values[option as keyof typeof values] === undefined || commands.includes(command)) continue;
    const short = OPTIONS[option as keyof typeof OPTIONS];
    const name = "short" in short ? `--${option} (-${short.short})` : `--${option}`;
    const allowed = commands.map(commandName);
    const list = allowed.length > 1
      ? `${allowed.slice(0, -1).join(", ")} and ${allowed[allowed.length - 1]}`
      : allowed[0];
    throw new SipcheckError(
      EXIT.usage,
      `${name} is only for ${list}, not for ${commandName(command)}`,
    );
  }
  let threshold = THRESHOLD;
  if (values.threshold !== undefined) {
    if (
      !/^\d+$/.test(values.threshold) || !(Number(values.threshold) >= 1) ||
      !Number.isSafeInteger(Number(values.threshold))
    ) {
      throw new SipcheckError(
        EXIT.usage,
        `--threshold must be a positive whole number, not "${values.threshold}"`,
      );
    }
    threshold = Number(values.threshold);
  }
  const ignore = (values.ignore ?? []).map((text) => {
    const block = parseCidr(text);
    if (!block) {
      throw new SipcheckError(
        EXIT.usage,
        `--ignore takes an IP address or CIDR block, not "${text}"`,
      );
    }
    return block;
  });
  let window: number | null = null;
  if (values.window !== undefined) {
    window = parseDuration(values.window);
    if (window === null) {
      throw new SipcheckError(
        EXIT.usage,
        `--window takes a duration such as 30s, 10m or 1h, not "${values.window}"`,
      );
    }
  }
  return {
    command,
    logs: positionals,
    dryRun: values["dry-run"] ?? false,
    threshold,
    ignore,
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    help: values.help ?? false,
    version: values.version ?? false,
    window,
  };
}

/** Set once stdout cannot be written any more: the rest of the output is dropped, and the run
 * goes on as it would have (bans stay, watch keeps banning). */
let stdoutGone = false;

/**
 * Writes text or bytes to stdout; settles once they are written out (when the pipe is full, that
 * waits), so that a buffer written can be used again (see {@link jsonReport}). Never fails: a
 * reader that went away (EPIPE, as in `sipcheck --json | head`) ends the output quietly, any
 * other error with one line on stderr. (Deno's stream throws EAGAIN when another program made the
 * pipe non-blocking and it is full, without saying how much it wrote, so that is an error there;
 * Node waits it out.)
 */
function writeStdout(text: string | Uint8Array): Promise<void> {
  if (stdoutGone) return Promise.resolve();
  withoutErrorEvents(process.stdout);
  return new Promise((resolve) => {
    const written = (error?: Error | null) => {
      if (error && !stdoutGone) {
        stdoutGone = true;
        const code = (error as { code?: string }).code;
        if (code !== "EPIPE") {
          writeStderr(`sipcheck: cannot write to standard output: ${code ?? error}\n`);
        }
      }
      resolve();
    };
    try {
      process.stdout.write(text, written);
    } catch (error) {
      written(error as Error); // Deno throws what Node passes to the callback
    }
  });
}

/** The streams {@link withoutErrorEvents} has quieted. */
const quieted = new WeakSet<NodeJS.WritableStream>();

/** A failed write is also an 'error' event on its stream, which would end the process with a
 * stack trace: the writers see the error themselves (callback or throw), so the event is ignored.
 * The listener is added whatever listeners are there already: Node pipes each worker thread's
 * stdout and stderr into this process's, and the listener that piping adds removes itself on the
 * first error and raises it again when no other listener is left. */
function withoutErrorEvents(stream: NodeJS.WritableStream): void {
  if (quieted.has(stream)) return;
  quieted.add(stream);
  stream.on("error", () => {});
}

/** Writes to stderr. A stderr that cannot be written (its reader gone) is not an error: there is
 * nowhere left to say anything, and the run goes on as it would have. */
function writeStderr(text: string): void {
  withoutErrorEvents(process.stderr);
  try {
    process.stderr.write(text);
  } catch {
    // Deno throws what Node emits as an 'error' event.
  }
}

/** The real world. */
const REAL_DEPS: Deps = {
  stdout: writeStdout,
  stderr: writeStderr,
  run: runProgram,
  uid: () => process.getuid?.() ?? -1,
  lockPath: LOCK_PATH,
  hostAddresses: ownAddresses,
  stdin: () => process.stdin,
};

/** Throws SipcheckError(77) unless running as root. */
function requireRoot(deps: Deps, command: Command): void {
  if (deps.uid() === 0) return;
  throw new SipcheckError(
    EXIT.noPermission,
    command === "scan" || command === "watch"
      ? "changing the firewall needs root; use --dry-run (-n) to scan without changing anything"
      : `"${command}" needs root: iptables cannot be read or changed without it`,
  );
}

/**
 * True when `path` is a file already in `read` (named twice, as `a.log ./a.log`, or through a
 * link): counting it twice would ban at half the threshold. Otherwise adds it; a path that cannot
 * be looked at is left for the scan (or the watcher) to report.
 */
function isReadAlready(path: string, read: Set<string>): boolean {
  let key: string;
  try {
    const stat = statSync(path, { bigint: true });
    key = `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
  if (read.has(key)) return true;
  read.add(key);
  return false;
}

/** The main job: scan the logs, decide, ban, report. */
async function scan(options: Options, deps: Deps): Promise<number> {
  const tally = newTally();
  const errors: string[] = [];
  let files = 0;
  const logs = options.logs.length ? options.logs.map((arg) => resolveLog(arg)) : [defaultLog()];
  const read = new Set<string>(); // device:inode of each file read
  for (const path of logs) {
    if (path !== "-" && isReadAlready(path, read)) continue;
    try {
      if (path === "-") await scanStream(deps.stdin(), createScanner(tally));
      else await scanFile(path, tally);
      files++;
    } catch (error) {
      const message = `cannot read "${path}": ${describeFileError(error)}`;
      errors.push(message);
      deps.stderr(`sipcheck: ${message}\n`);
    }
  }

  const ignore = [
    ...IGNORE.map((text) => parseCidr(text) as Cidr),
    ...deps.hostAddresses().map((address) => parseCidr(address) as Cidr),
    ...options.ignore,
  ];
  const versions = [4, 6] as const;
  const offenders = decide(tally.counts.atLeast(options.threshold), {
    ...options,
    ignore,
    banned: new Set(),
  });
  const states = new Map<IpVersion, ChainState>();
  let exit: number = errors.length ? EXIT.noInput : EXIT.ok;
  let decisions = offenders;
  let firewallError: SipcheckError | null = null;
  const kept = new Set<string>(); // banned by a batch that could not be undone
  const undoFailures: string[] = [];

  if (!options.dryRun) {
    try {
      // IPv4 and IPv6 are separate tables: their calls go at once.
      const needed = versions.filter((version) =>
        offenders.some((d) => d.action === "banned" && versionOf(d.ip) === version)
      );
      const listed = await Promise.all(
        needed.map((version) => listChainForBans(deps.run, version)),
      );
      needed.forEach((version, k) => states.set(version, listed[k]));
      // What the chains drop already is not banned again.
      const banned = new Set(listed.flatMap((state) => [...state.bans]));
      decisions = offenders.map((d) =>
        d.action === "banned" && banned.has(d.ip) ? { ...d, action: "already-banned" } : d
      );
      const batches = [...states].map(([version, state]) => ({
        version,
        state,
        fresh: decisions
          .filter((d) => d.action === "banned" && versionOf(d.ip) === version)
          .map((d) => d.ip),
      })).filter((batch) => batch.fresh.length > 0);
      const results = await Promise.allSettled(
        batches.map((batch) => addBans(deps.run, batch.version, batch.state, batch.fresh)),
      );
      const failed = results.find((result) => result.status === "rejected");
      if (failed) {
        // Each batch is atomic; undo the batches that went in so that the run changes nothing.
        for (const [k, batch] of batches.entries()) {
          if (results[k].status !== "fulfilled") continue;
          try {
            await removeBans(deps.run, batch.version, batch.state, batch.fresh);
          } catch (undoError) {
            if (!(undoError instanceof SipcheckError)) throw undoError;
            for (const ip of batch.fresh) kept.add(ip);
            undoFailures.push(
              `the ${familyName(batch.version)} batch went in and could not be taken out again ` +
                `(${undoError.message}): its ${plural(batch.fresh.length, "ban")} stay`,
            );
          }
        }
        throw failed.reason;
      }
    } catch (error) {
      if (!(error instanceof SipcheckError)) throw error;
      firewallError = error;
      decisions = decisions.map((d) =>
        d.action === "banned" && !kept.has(d.ip) ? { ...d, action: "would-ban" } : d
      );
      errors.push(error.message);
      exit = EXIT.unavailable;
    }
  }

  const summary: ScanSummary = {
    files,
    threshold: options.threshold,
    dryRun: options.dryRun,
    errors,
  };
  if (options.json) {
    for (const piece of jsonReport(decisions, tally, summary)) await deps.stdout(piece);
  } else {
    for (const piece of textReport(decisions, tally, summary, options.quiet)) {
      await deps.stdout(piece);
    }
  }
  if (firewallError) {
    const outcome = undoFailures.length ? undoFailures.join("; ") : "nothing was banned";
    deps.stderr(`sipcheck: ${firewallError.message}; ${outcome}\n`);
  }
  if (tally.ambiguous) {
    deps.stderr(
      `sipcheck: warning: ${plural(tally.ambiguous, "security event")} with forged addresses ` +
        "(ambiguous, not counted): someone is trying to frame another address\n",
    );
  }
  return exit;
}

/** `list`: the addresses our chains drop. */
async function list(options: Options, deps: Deps): Promise<number> {
  const bans: string[] = [];
  const states = await listBothChains(deps.run);
  for (const [k, version] of ([4, 6] as const).entries()) {
    const state = states[k];
    for (const ip of state.bans) bans.push(ip);
    // The bans are listed all the same; what else is in the chain is said, as a ban run would.
    const refusal = banRefusal(version, state);
    if (refusal) deps.stderr(`sipcheck: warning: ${refusal}\n`);
  }
  if (options.json) await deps.stdout(JSON.stringify(bans) + "\n");
  else if (bans.length) await deps.stdout(bans.join("\n") + "\n");
  else if (!options.quiet) await deps.stdout("sipcheck: no addresses are banned\n");
  return EXIT.ok;
}

/**
 * `clear`: remove our jump rules and chains, in both families, or nothing at all. Both families
 * are read and checked first: if either holds a rule sipcheck did not write, neither is touched.
 * If the second family's batch fails, the first is put back. `--dry-run` says what it would
 * remove.
 */
async function clear(options: Options, deps: Deps): Promise<number> {
  const versions = [4, 6] as const;
  const states = await listBothChains(deps.run);
  const refusals = versions.map((version, k) => clearRefusal(version, states[k]))
    .filter((refusal) => refusal !== null);
  if (refusals.length) {
    throw new SipcheckError(
      EXIT.unavailable,
      `nothing was cleared, in either family: ${refusals.join("; ")}; sipcheck removes only ` +
        "what it wrote: delete or move those rules, then run clear again",
    );
  }
  const plans = versions.map((version, k) => ({ version, state: states[k] }))
    .filter(({ state }) => clearInput(state) !== null);
  const what = plans.map(({ version, state }) =>
    `${familyName(version)} (${plural(state.bans.size, "ban")})`
  ).join(" and ");
  const cleared: typeof plans = [];
  if (!options.dryRun) {
    for (const plan of plans) {
      try {
        await clearChain(deps.run, plan.version, plan.state);
      } catch (error) {
        if (!(error instanceof SipcheckError)) throw error;
        throw new SipcheckError(error.code, `${error.message}; ${await undoClear(cleared, deps)}`);
      }
      cleared.push(plan);
    }
  }
  if (!options.quiet) {
    const verb = options.dryRun ? "would remove" : "removed";
    await deps.stdout(
      plans.length
        ? `sipcheck: ${verb} the ${CHAIN} chain and its jump rules from ${what}\n`
        : "sipcheck: nothing to clear\n",
    );
  }
  return EXIT.ok;
}

/** Puts back the families a failed `clear` had already cleared; says what the firewall is now. */
async function undoClear(
  cleared: readonly { version: IpVersion; state: ChainState }[],
  deps: Deps,
): Promise<string> {
  const outcomes: string[] = [];
  let allPutBack = true;
  for (const { version, state } of cleared) {
    try {
      await unclearChain(deps.run, version, state);
      outcomes.push(`${familyName(version)} had been cleared and was put back as it was`);
    } catch (error) {
      if (!(error instanceof SipcheckError)) throw error;
      allPutBack = false;
      outcomes.push(
        `${familyName(version)} was cleared and could not be put back (${error.message}): ` +
          "its bans come back with the next ban run",
      );
    }
  }
  return allPutBack ? [...outcomes, "nothing was changed"].join(": ") : outcomes.join("; ");
}

/**
 * Runs sipcheck with the given arguments and returns the exit code. Expected problems are one
 * line on stderr with a sysexits code; nothing else escapes.
 */
export async function main(
  argv: readonly string[],
  overrides: Partial<Deps> = {},
): Promise<number> {
  const deps: Deps = { ...REAL_DEPS, ...overrides };
  if (argv[0] === "audit") {
    return await audit([...argv.slice(1)], {
      stdout: (text) => void deps.stdout(text),
      stderr: deps.stderr,
    });
  }
  let locked = false;
  try {
    const options = parseOptions(argv);
    if (options.help) {
      await deps.stdout(HELP);
      return EXIT.ok;
    }
    if (options.version) {
      await deps.stdout(`sipcheck ${VERSION}\n`);
      return EXIT.ok;
    }
    if (options.command === "list") {
      requireRoot(deps, "list");
      return await list(options, deps);
    }
    if (options.command === "clear" || !options.dryRun) requireRoot(deps, options.command);
    if (!options.dryRun) {
      await takeLock(deps.lockPath, deps.run, options.command);
      locked = true;
    }
    if (options.command === "clear") return await clear(options, deps);
    if (options.command === "watch") return await watch(options, deps);
    return await scan(options, deps);
  } catch (error) {
    if (error instanceof SipcheckError) {
      deps.stderr(`sipcheck: ${error.message}\n`);
      return error.code;
    }
    deps.stderr(
      `sipcheck: unexpected error: ${String((error as Error)?.message ?? error).split("\n")[0]}\n`,
    );
    return EXIT.unexpected;
  } finally {
    if (locked) releaseLock(deps.lockPath);
  }
}

if (!isMainThread && workerData?.sipcheckReader) {
  readerThread(workerData.sipcheckReader);
} else if (import.meta.main) {
  const code = await main(process.argv.slice(2));
  // Deno before 2.8.2 keeps a read of standard input pending after it is closed, so a watcher of
  // `-` stopped by SIGTERM would linger until killed: there sipcheck ends here, all written.
  if (deno && OLD_DENO) deno.exit(code);
  process.exitCode = code;
}
