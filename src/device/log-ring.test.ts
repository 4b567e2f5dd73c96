import { describe, expect, it } from "vitest";
import { AppLog } from "./log-ring.ts";

const text = (lines: { text: Buffer }[] | undefined) =>
  Buffer.concat((lines ?? []).map((l) => l.text)).toString();

describe("AppLog", () => {
  it("splits output into timed lines per stream, with tail and since", () => {
    let now = 1000;
    const log = new AppLog({ now: () => now });
    log.begin();
    log.append(Buffer.from("one\ntw"), "stdout");
    log.append(Buffer.from("err\n"), "stderr");
    now = 2000;
    log.append(Buffer.from("o\nthree\n"), "stdout");
    expect(text(log.read())).toBe("one\nerr\ntwo\nthree\n");
    expect(text(log.read({ tailLines: 2 }))).toBe("two\nthree\n");
    expect(text(log.read({ tailLines: 0 }))).toBe("");
    expect(text(log.read({ sinceMs: 2000 }))).toBe("two\nthree\n");
    expect(log.read()?.map((l) => l.stream)).toEqual(["stdout", "stderr", "stdout", "stdout"]);
  });

  it("keeps the previous instance's tail across a restart, bounded", () => {
    const log = new AppLog({ now: () => 0, maxBytes: 1000, previousBytes: 8 });
    expect(log.read({ previous: true })).toBeUndefined();
    log.begin();
    log.append(Buffer.from("first\nsecond\nthird\n"));
    log.begin();
    log.append(Buffer.from("new\n"));
    expect(text(log.read({ previous: true }))).toBe("third\n");
    expect(text(log.read())).toBe("new\n");
  });

  it("drops the oldest lines beyond maxBytes and splits an endless line", () => {
    const log = new AppLog({ now: () => 0, maxBytes: 10 });
    log.begin();
    log.append(Buffer.from("aaaa\nbbbb\ncccc\n"));
    expect(text(log.read())).toBe("bbbb\ncccc\n");
    const roomy = new AppLog({ now: () => 0 });
    roomy.begin();
    roomy.append(Buffer.alloc(40 * 1024, 0x61));
    expect(roomy.read()?.map((l) => l.text.length)).toEqual([16 * 1024, 16 * 1024, 8 * 1024]);
  });

  it("gives followers new lines and ends them with the instance; a partial last line is kept", () => {
    const log = new AppLog({ now: () => 0 });
    const ended: string[] = [];
    log.follow(
      () => undefined,
      () => ended.push("before start"),
    );
    log.begin();
    const seen: string[] = [];
    const stop = log.follow(
      (l) => seen.push(l.text.toString()),
      () => ended.push("first"),
    );
    log.follow(
      () => undefined,
      () => ended.push("second"),
    );
    log.append(Buffer.from("x\ny"));
    expect(text(log.read())).toBe("x\ny");
    stop();
    log.append(Buffer.from("\n"));
    log.end(1);
    expect(seen).toEqual(["x\n"]);
    expect(text(log.read())).toBe("x\ny\n");
    expect(ended).toEqual(["before start", "second"]);
    log.append(Buffer.from("tail without newline"));
    log.end();
    expect(text(log.read())).toBe("x\ny\ntail without newline");
  });

  it("ignores the end of an instance that has been replaced", () => {
    const log = new AppLog({ now: () => 0 });
    const first = log.begin();
    log.begin();
    const ended: string[] = [];
    log.follow(
      () => undefined,
      () => ended.push("current"),
    );
    log.end(first);
    expect(ended).toEqual([]);
    expect(log.running).toBe(true);
  });
});
