/**
 * The firewall: restore input (pure), then the real iptables and ip6tables, each test in a
 * private network namespace of its own (`unshare --net --mount`, with a private /run for the
 * lock), and once at the packet level across a veth pair. The host's firewall is never touched.
 * Without root these tests skip with the reason; CI runs them as root.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  banInput,
  CHAIN,
  type ChainState,
  clearInput,
  failureReason,
  jumpRules,
  parseListing,
  PORTS,
  unbanInput,
} from "../sipcheck.ts";
import {
  cliCommand,
  firewallSkipReason,
  inNamespace,
  REGISTER,
  RUNTIME,
  shellQuote,
  SIPCHECK,
  tempDir,
} from "./helpers.ts";

const dir = tempDir();
after(dir.remove);

/** Writes a log in the temp dir with `n` failures per address and returns its path. */
function log(name: string, failures: Record<string, number>): string {
  const path = join(dir.path, name);
  writeFileSync(path, Object.entries(failures).map(([a, n]) => REGISTER(a).repeat(n)).join(""));
  return path;
}

const empty: ChainState = { exists: false, bans: new Set(), jumps: [] };

describe("restore input", () => {
  test("a first ban declares the chain and inserts the jumps at the top of INPUT", () => {
    assert.equal(
      banInput(empty, ["203.0.113.5", "2001:db8::5"]),
      [
        "*filter",
        `:${CHAIN} - [0:0]`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        `-A ${CHAIN} -s 2001:db8::5/128 -j DROP`,
        `-I INPUT 1 -p udp -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`,
        `-I INPUT 1 -p tcp -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`,
        "COMMIT",
        "",
      ].join("\n"),
    );
  });
  test("an existing chain is never declared again (that would flush it)", () => {
    const state: ChainState = { exists: true, bans: new Set(["203.0.113.1"]), jumps: jumpRules() };
    const input = banInput(state, ["203.0.113.6"]);
    assert.equal(input, `*filter\n-A ${CHAIN} -s 203.0.113.6/32 -j DROP\nCOMMIT\n`);
  });
  test("a missing jump is put back", () => {
    const state: ChainState = { exists: true, bans: new Set(), jumps: [jumpRules()[0]] };
    assert.match(banInput(state, ["203.0.113.6"]), /-I INPUT 1 -p tcp .*\nCOMMIT/);
    assert.doesNotMatch(banInput(state, ["203.0.113.6"]), /-p udp/);
  });
  test("only IP addresses get into the input", () => {
    for (
      const bad of [
        "203.0.113.5\n-F INPUT",
        "pbx.example",
        "",
        "1.2.3.4/8",
        "2001:DB8::1",
        "fe80::1%eth0",
      ]
    ) {
      assert.throws(() => banInput(empty, [bad]), /not an IP address/);
    }
  });
  test("unbanInput undoes banInput", () => {
    assert.equal(
      unbanInput(empty, ["203.0.113.5"]),
      [
        "*filter",
        ...jumpRules().map((rule) => rule.replace("-A ", "-D ")),
        `-F ${CHAIN}`,
        `-X ${CHAIN}`,
        "COMMIT",
        "",
      ].join("\n"),
    );
    const existing: ChainState = { exists: true, bans: new Set(), jumps: jumpRules() };
    assert.equal(
      unbanInput(existing, ["203.0.113.5"]),
      `*filter\n-D ${CHAIN} -s 203.0.113.5/32 -j DROP\nCOMMIT\n`,
    );
  });
  test("clear removes our jumps and chain only, and nothing when there is nothing", () => {
    assert.equal(clearInput(empty), null);
    const foreign = "-A FORWARD -j sipcheck";
    const state: ChainState = { exists: true, bans: new Set(), jumps: [...jumpRules(), foreign] };
    const input = clearInput(state)!;
    assert.ok(!input.includes("FORWARD"), "a jump from elsewhere is not ours to delete");
    assert.equal(input.split("\n").filter((l) => l.startsWith("-D INPUT")).length, 2);
    assert.match(input, new RegExp(`-F ${CHAIN}\n-X ${CHAIN}\nCOMMIT\n$`));
  });
  test("parseListing reads our chain and only our chain", () => {
    const state = parseListing([
      "-P INPUT ACCEPT",
      "-N sipcheck",
      "-N sipcheck-other",
      "-A INPUT -p tcp -m multiport --dports 5060,5061,4569,5038 -j sipcheck",
      "-A INPUT -s 198.51.100.1/32 -j DROP",
      "-A sipcheck -s 203.0.113.5/32 -j DROP",
      "-A sipcheck -s 2001:db8::5/128 -j DROP",
      "-A sipcheck -s 203.0.113.0/24 -j DROP",
      "-A sipcheck-other -s 203.0.113.9/32 -j DROP",
      "",
    ].join("\n"));
    assert.equal(state.exists, true);
    assert.deepEqual([...state.bans], ["203.0.113.5", "2001:db8::5"]);
    assert.deepEqual(state.jumps, [
      "-A INPUT -p tcp -m multiport --dports 5060,5061,4569,5038 -j sipcheck",
    ]);
  });
});

describe("why an iptables command failed, in one line", () => {
  test("iptables-nft: the cause on the line after the version banner", () => {
    assert.equal(
      failureReason(
        "ip6tables-restore v1.8.9 (nf_tables): \n" +
          "line 3: CHAIN_DEL failed (Device or resource busy): chain sipcheck\n",
        4,
      ),
      "line 3: CHAIN_DEL failed (Device or resource busy): chain sipcheck",
    );
  });
  test("the banner goes, the help hint goes, the meaningful lines are joined", () => {
    assert.equal(
      failureReason(
        "iptables-restore v1.8.9 (nf_tables): invalid mask `129' specified\n" +
          "Error occurred at line: 2\n" +
          "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
        2,
      ),
      "invalid mask `129' specified; Error occurred at line: 2",
    );
    assert.equal(
      failureReason("iptables v1.8.9 (legacy): Chain 'sipcheck' does not exist\n", 1),
      "Chain 'sipcheck' does not exist",
    );
  });
  test("legacy messages stay whole; nothing at all gives the exit code", () => {
    assert.equal(
      failureReason("iptables-restore: line 3 failed\n", 1),
      "iptables-restore: line 3 failed",
    );
    assert.equal(failureReason("", 4), "exit code 4");
    assert.equal(failureReason("iptables-restore v1.8.9 (nf_tables): \n\n", 4), "exit code 4");
  });
  test("always one line, and not endless", () => {
    const reason = failureReason("a\r\n\tb\x1b[31m\n" + "x".repeat(5000), 1);
    assert.ok(!/\p{Cc}/u.test(reason), JSON.stringify(reason));
    assert.ok(reason.startsWith("a; b [31m; x"), reason);
    assert.ok(reason.length <= 400 && reason.endsWith("…"));
  });
});

const skip = firewallSkipReason();

/** Runs a script in a fresh namespace and splits its output at lines of `==`. */
function sections(script: string): string[] {
  const ran = inNamespace(script);
  assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
  return ran.stdout.split("==\n");
}

/** The filter table as iptables-save prints it, without comments and counters. */
const SAVE = (binary: string) =>
  `${binary}-save -t filter | grep -v '^#' | sed 's/ \\[[0-9]*:[0-9]*\\]$//'`;

describe("real iptables in a private network namespace", { skip: skip ?? false }, () => {
  const offenders = log("offenders.log", {
    "203.0.113.5:5060": 250,
    "203.0.113.6": 300,
    "[2001:db8::5]:5060": 200,
    "203.0.113.7:5060": 199,
  });
  const more = log("more.log", { "203.0.113.8:5060": 200, "[2001:db8::8]:5060": 200 });

  test("bans land in our chain, jumps exist for udp and tcp, in both families", () => {
    const [run, v4, v6] = sections(
      `sipcheck -q ${offenders}; echo ==; iptables -S; echo ==; ip6tables -S`,
    );
    assert.equal(
      run,
      "banned          203.0.113.6  300 failures\n" +
        "banned          203.0.113.5  250 failures\n" +
        "banned          2001:db8::5  200 failures\n",
    );
    const jumps = (protocol: string) =>
      `-A INPUT -p ${protocol} -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`;
    assert.equal(
      v4,
      [
        "-P INPUT ACCEPT",
        "-P FORWARD ACCEPT",
        "-P OUTPUT ACCEPT",
        `-N ${CHAIN}`,
        jumps("tcp"),
        jumps("udp"),
        `-A ${CHAIN} -s 203.0.113.6/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        "",
      ].join("\n"),
    );
    assert.match(
      v6,
      new RegExp(`${jumps("tcp")}\n${jumps("udp")}\n-A ${CHAIN} -s 2001:db8::5/128 -j DROP\n$`),
    );
  });

  test("a rerun adds no duplicate and says already banned; existing bans survive new ones", () => {
    const [first, second, third, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; sipcheck ${offenders}; echo ==; sipcheck --json ${more}; echo ==; ` +
        `sipcheck -q ${more}; echo ==; iptables -S ${CHAIN}; ip6tables -S ${CHAIN}`,
    );
    assert.match(first, /already banned +203\.0\.113\.6 +300 failures\n/);
    assert.match(first, /: 3 already banned\n$/);
    const json = JSON.parse(second);
    assert.deepEqual(json.addresses.map((a: { action: string }) => a.action), ["banned", "banned"]);
    assert.equal(third, "", "nothing new, nothing printed with -q");
    assert.equal(
      rules,
      [
        `-N ${CHAIN}`,
        `-A ${CHAIN} -s 203.0.113.6/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.8/32 -j DROP`,
        `-N ${CHAIN}`,
        `-A ${CHAIN} -s 2001:db8::5/128 -j DROP`,
        `-A ${CHAIN} -s 2001:db8::8/128 -j DROP`,
        "",
      ].join("\n"),
    );
  });

  test("foreign rules and chains are the same after a run and after clear; clear twice is fine", () => {
    const foreign = [
      "iptables -N foreign",
      "iptables -A foreign -s 198.51.100.1 -j ACCEPT",
      "iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
      "iptables -A INPUT -p tcp --dport 22 -j ACCEPT",
      "iptables -A INPUT -p udp --dport 5060 -s 198.51.100.2 -j ACCEPT",
      "ip6tables -N foreign6",
      "ip6tables -A INPUT -s 2001:db8:1::/48 -j foreign6",
      "iptables -P FORWARD DROP",
    ].join(" && ");
    const [before4, before6, after4, after6, clear1, cleared4, cleared6, clear2] = sections(
      `${foreign} && ${SAVE("iptables")}; echo ==; ${SAVE("ip6tables")}; echo ==; ` +
        `sipcheck -q ${offenders} >/dev/null; ${SAVE("iptables")}; echo ==; ${
          SAVE("ip6tables")
        }; echo ==; ` +
        `sipcheck clear; echo ==; ${SAVE("iptables")}; echo ==; ${
          SAVE("ip6tables")
        }; echo ==; sipcheck clear`,
    );
    const notOurs = (save: string) =>
      save.split("\n").filter((line) => !line.includes(CHAIN)).join("\n");
    assert.match(after4, new RegExp(`-A ${CHAIN} -s 203.0.113.6/32 -j DROP`));
    assert.equal(notOurs(after4), before4, "iptables-save outside our chain is unchanged by a run");
    assert.equal(notOurs(after6), before6);
    assert.match(
      after4,
      new RegExp(
        `^-A INPUT -p tcp .* -j ${CHAIN}\n-A INPUT -p udp .* -j ${CHAIN}\n-A INPUT -m conntrack`,
        "m",
      ),
      "our jumps come first",
    );
    assert.equal(
      clear1,
      "sipcheck: removed the sipcheck chain and its jump rules from iptables (2 bans) and ip6tables (1 ban)\n",
    );
    assert.equal(cleared4, before4, "after clear, iptables-save is what it was before the run");
    assert.equal(cleared6, before6);
    assert.equal(clear2, "sipcheck: nothing to clear\n");
  });

  test("list matches the chain", () => {
    const [list, json, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; sipcheck list; echo ==; sipcheck list --json; echo ==; ` +
        `iptables -S ${CHAIN}; ip6tables -S ${CHAIN}`,
    );
    const inChain = [...rules.matchAll(/-s (\S+)\/\d+ -j DROP/g)].map((m) => m[1]);
    assert.deepEqual(list.trim().split("\n"), inChain);
    assert.deepEqual(JSON.parse(json), inChain);
  });

  test("a jump from someone else's rule makes clear fail and change nothing (69)", () => {
    const [run, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; iptables -A FORWARD -j ${CHAIN}; sipcheck clear; echo "exit $?"; echo ==; iptables -S`,
    );
    assert.match(run, /exit 69\n$/);
    assert.match(rules, new RegExp(`-A ${CHAIN} -s 203.0.113.6/32 -j DROP`));
    assert.match(rules, new RegExp(`-A INPUT -p udp .* -j ${CHAIN}`));
  });

  test("a run whose second batch fails leaves both chains as they were (69)", () => {
    // The real iptables-restore gets a batch with one bad rule in it (an impossible prefix).
    const driver = join(dir.path, "poisoned.ts");
    writeFileSync(
      driver,
      `import process from "node:process";\n` +
        `import { main, runProgram } from ${JSON.stringify(SIPCHECK)};\n` +
        `process.exitCode = await main(${JSON.stringify(["-q", more])}, {\n` +
        `  run: (binary, args, input) => runProgram(binary, args, binary.endsWith("ip6tables-restore") && input\n` +
        `    ? input.replace("COMMIT", "-A ${CHAIN} -s 2001:db8::1/129 -j DROP\\nCOMMIT") : input),\n` +
        `});\n`,
    );
    const command = cliCommand([], ["-A"]).filter((word) => word !== SIPCHECK);
    const runDriver =
      (RUNTIME === "deno" ? [...command.slice(0, -1), "-A", driver] : [command[0], driver])
        .map(shellQuote).join(" ");
    const [before, result, afterRun] = sections(
      `sipcheck -q ${offenders} >/dev/null; ${SAVE("iptables")}; ${SAVE("ip6tables")}; echo ==; ` +
        `${runDriver} 2>&1; echo "exit $?"; echo ==; ${SAVE("iptables")}; ${SAVE("ip6tables")}`,
    );
    assert.match(result, /exit 69\n$/);
    assert.match(
      result,
      /ip6tables-restore -w --noflush failed: invalid mask `129' specified; Error occurred at line: \d+; nothing was banned\n/,
      "the cause, not iptables-nft's version banner",
    );
    assert.match(before, /203\.0\.113\.6/);
    assert.equal(
      afterRun,
      before,
      "203.0.113.8 went in with the first batch and was taken out again",
    );
  });
});

describe("packets across a veth pair", { skip: skip ?? false }, () => {
  test("datagrams from a banned source are dropped, others delivered, all again after clear", () => {
    const listener = join(dir.path, "listen.ts");
    writeFileSync(
      listener,
      `import dgram from "node:dgram";\n` +
        `for (const [type, address] of [["udp4", "0.0.0.0"], ["udp6", "::"]]) {\n` +
        `  const socket = dgram.createSocket(type === "udp6" ? { type, ipv6Only: true } : { type });\n` +
        `  socket.on("message", (message, from) => {\n` +
        `    if (String(message) === "stop") process.exit(0);\n` +
        `    console.log(String(message) + " " + from.address);\n` +
        `  });\n` +
        `  socket.bind(5060, address);\n` +
        `}\n` +
        `setTimeout(() => process.exit(3), 20000);\n`,
    );
    const sender = join(dir.path, "send.ts");
    writeFileSync(
      sender,
      `import dgram from "node:dgram";\n` +
        `const [phase, ...sources] = ${
          RUNTIME === "deno" ? "Deno.args" : "process.argv.slice(2)"
        };\n` +
        `for (const source of sources) {\n` +
        `  const v6 = source.includes(":");\n` +
        `  const socket = dgram.createSocket(v6 ? "udp6" : "udp4");\n` +
        `  await new Promise((resolve) => socket.bind(0, source, resolve));\n` +
        `  await new Promise((resolve) => socket.send(phase, 5060, v6 ? "2001:db8::10" : "192.0.2.10", resolve));\n` +
        `  socket.close();\n` +
        `}\n`,
    );
    const runtime = (script: string) =>
      (RUNTIME === "deno"
        ? [cliCommand([], ["-A"])[0], "run", "-A", script]
        : [cliCommand([])[0], script]).map(shellQuote).join(" ");
    const offenders = log("veth.log", { "192.0.2.66:5060": 200, "[2001:db8::66]:5060": 200 });
    const sources = "192.0.2.66 192.0.2.67 2001:db8::66 2001:db8::67";
    const [received, banned] = sections([
      "ip link set lo up",
      "ip netns add peer",
      "ip link add pbx0 type veth peer name peer0 netns peer",
      "ip addr add 192.0.2.10/24 dev pbx0 && ip addr add 2001:db8::10/64 dev pbx0 nodad && ip link set pbx0 up",
      "ip -n peer addr add 192.0.2.66/24 dev peer0 && ip -n peer addr add 192.0.2.67/24 dev peer0",
      "ip -n peer addr add 2001:db8::66/64 dev peer0 nodad && ip -n peer addr add 2001:db8::67/64 dev peer0 nodad",
      "ip -n peer link set peer0 up && ip -n peer link set lo up",
      `${runtime(listener)} > /run/received &`,
      "sleep 1",
      `ip netns exec peer ${runtime(sender)} before ${sources}`,
      `sipcheck -q ${offenders} > /run/banned`,
      `ip netns exec peer ${runtime(sender)} banned ${sources}`,
      "sipcheck -q clear",
      `ip netns exec peer ${runtime(sender)} cleared ${sources}`,
      "sleep 0.5",
      `ip netns exec peer ${runtime(sender)} stop 192.0.2.67`,
      "wait",
      "ip netns del peer",
      "sort /run/received; echo ==; cat /run/banned",
    ].join("\n"));
    assert.equal(
      banned,
      "banned          192.0.2.66    200 failures\nbanned          2001:db8::66  200 failures\n",
    );
    assert.deepEqual(received.trim().split("\n"), [
      "banned 192.0.2.67",
      "banned 2001:db8::67",
      "before 192.0.2.66",
      "before 192.0.2.67",
      "before 2001:db8::66",
      "before 2001:db8::67",
      "cleared 192.0.2.66",
      "cleared 192.0.2.67",
      "cleared 2001:db8::66",
      "cleared 2001:db8::67",
    ]);
  });
});

describe("why firewall tests skip", () => {
  test("the reason is visible when they do", { skip: skip ?? false }, () => {
    assert.equal(skip, null);
  });
  if (skip) test(`firewall tests skipped: ${skip}`, { skip }, () => {});
});
