/**
 * Shared test helpers: where things are, how to run the CLI under the runtime that runs the
 * tests, and how to run commands in a private network namespace. No side effects on import
 * (plain `node --test` executes every .ts file under test/).
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { CHAIN, type RunResult } from "../sipcheck.ts";

/** The repository root. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/** The program under test. */
export const SIPCHECK = join(ROOT, "sipcheck.ts");
/** A fixture's path. */
export function fixture(name: string): string {
  return join(ROOT, "fixtures", name);
}

/** What main writes to stdout, as text: it writes the `--json` report as UTF-8 bytes. */
export function outputText(piece: string | Uint8Array): string {
  return typeof piece === "string" ? piece : new TextDecoder().decode(piece);
}

/** The pieces of a report joined, as text: each read before the next is asked for (the
 * `--json` report's share a buffer). */
export function joinedText(pieces: Iterable<string | Uint8Array>): string {
  return Array.from(pieces, outputText).join("");
}

/** The Deno global, when the tests run under Deno. */
const deno = (globalThis as { Deno?: typeof Deno }).Deno;
/** Which runtime runs the tests (and so the CLI under test). */
export const RUNTIME: "deno" | "node" = deno ? "deno" : "node";

/** The permission flags of sipcheck.ts's shebang line, read from the file itself. */
export function shebangFlags(): string[] {
  const first = readFileSync(SIPCHECK, "utf8").split("\n")[0];
  const words = first.split(/ +/);
  return words.slice(words.indexOf("deno") + 1);
}

/** argv that runs sipcheck.ts under the current runtime. Deno gets `flags` (default: read any
 * file, plus the shebang's other permissions). */
export function cliCommand(args: readonly string[], flags?: readonly string[]): string[] {
  if (deno) {
    const granted = flags ??
      ["--no-prompt", "--allow-read", "--allow-sys=uid,networkInterfaces", "--allow-write=/run"];
    return [deno.execPath(), "run", ...granted, SIPCHECK, ...args];
  }
  return [process.execPath, SIPCHECK, ...args];
}

/** The result of a finished process. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (never through a shell). */
export function run(argv: readonly string[], input?: string | Uint8Array): Ran {
  const result = spawnSync(argv[0], argv.slice(1), {
    input,
    encoding: "utf8",
    maxBuffer: 512 << 20,
  });
  if (result.error) throw result.error;
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** Runs sipcheck.ts with `args` under the current runtime. */
export function sipcheck(args: readonly string[], input?: string | Uint8Array): Ran {
  return run(cliCommand(args), input);
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), "sipcheck-test-"));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** True when running as root. */
export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** Why the firewall tests cannot run here, or null when they can (root, unshare, iptables). */
export function firewallSkipReason(): string | null {
  if (!isRoot()) {
    return "needs root: firewall tests run real iptables in a private network namespace";
  }
  for (const binary of ["/usr/bin/unshare", "/usr/sbin/iptables", "/usr/sbin/ip6tables"]) {
    try {
      readFileSync(binary);
    } catch {
      return `needs ${binary} (apt-get install iptables util-linux)`;
    }
  }
  return null;
}

/** Quotes a word for sh. */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Deno's permissions for sipcheck in {@link inNamespace}: all it needs there. */
const NAMESPACE_FLAGS = [
  "--no-prompt",
  "--allow-read",
  "--allow-write=/run",
  "--allow-run",
  "--allow-sys=uid,networkInterfaces",
];

/** `sipcheck ARGS` as one line of shell for a script run by {@link inNamespace}. */
export function namespaceCommand(args: readonly string[]): string {
  return cliCommand(args, NAMESPACE_FLAGS).map(shellQuote).join(" ");
}

/**
 * Runs a shell script in a private network namespace with its own /run (so sipcheck's lock file
 * is private too): the host's firewall is never touched. The shell function `sipcheck` in the
 * script runs the CLI under the current runtime (with every permission it needs).
 */
export function inNamespace(script: string): Ran {
  const command = namespaceCommand([]);
  return run([
    "/usr/bin/unshare",
    "--net",
    "--mount",
    "/bin/sh",
    "-c",
    `mount -t tmpfs tmpfs /run || exit 99\nsipcheck() { ${command} "$@"; }\n${script}`,
  ]);
}

/**
 * A fake iptables/ip6tables(-restore) that understands what sipcheck sends, with failures, a
 * missing binary and held calls on demand. The real one is tested in firewall.test.ts.
 */
export class FakeFirewall {
  chains = {
    4: new Map<string, string[]>([["INPUT", []]]),
    6: new Map<string, string[]>([["INPUT", []]]),
  };
  calls: string[] = [];
  /** Restore calls of that family fail. */
  fail: { 4: boolean; 6: boolean } = { 4: false, 6: false };
  /** Every call fails as if the binary were not there. */
  missing = false;
  /** While set, restore calls wait for it. */
  hold: Promise<void> | null = null;
  /** Called when a restore call starts. */
  onRestore: () => void = () => {};

  run = async (binary: string, args: readonly string[], input?: string): Promise<RunResult> => {
    this.calls.push([binary, ...args].join(" ") + (input ? "\n" + input : ""));
    if (this.missing) throw Object.assign(new Error("spawn ENOENT"), { code: "ENOENT" });
    if (binary.endsWith("/bin/kill")) return { code: 1, stdout: "", stderr: "" };
    const version = binary.includes("ip6tables") ? 6 : 4;
    const chains = this.chains[version];
    if (binary.endsWith("-restore")) {
      this.onRestore();
      if (this.hold) await this.hold;
      if (this.fail[version]) {
        return { code: 2, stdout: "", stderr: "iptables-restore: line 3 failed\n" };
      }
      for (const line of (input ?? "").split("\n")) {
        const words = line.split(" ");
        if (line.startsWith(":")) chains.set(line.slice(1).split(" ")[0], []);
        else if (words[0] === "-A") chains.get(words[1])!.push(line);
        else if (words[0] === "-I") {
          const rule = `-A ${words[1]} ${words.slice(3).join(" ")}`;
          chains.get(words[1])!.splice(Number(words[2]) - 1, 0, rule);
        } else if (words[0] === "-D") {
          const rules = chains.get(words[1])!;
          rules.splice(rules.indexOf(line.replace("-D ", "-A ")), 1);
        } else if (words[0] === "-F") chains.set(words[1], []);
        else if (words[0] === "-X") chains.delete(words[1]);
      }
      return { code: 0, stdout: "", stderr: "" };
    }
    const listing = [
      "-P INPUT ACCEPT",
      ...[...chains.keys()].filter((c) => c !== "INPUT").map((c) => `-N ${c}`),
    ];
    for (const rules of chains.values()) for (const rule of rules) listing.push(rule);
    return { code: 0, stdout: listing.join("\n") + "\n", stderr: "" };
  };

  /** The sources our chain drops, as `-s` prints them. */
  bans(version: 4 | 6): string[] {
    return (this.chains[version].get(CHAIN) ?? []).map((rule) => rule.split(" ")[3]);
  }

  /** The restore calls made, with their input. */
  restores(): string[] {
    return this.calls.filter((call) => call.includes("-restore"));
  }
}

/** A chan_sip registration failure line for `address` (with or without a port). */
export const REGISTER = (address: string) =>
  `[2026-11-25 08:00:00.001] NOTICE[2210] chan_sip.c: Registration from '<sip:1@192.0.2.10>' ` +
  `failed for '${address}' - Wrong password\n`;
