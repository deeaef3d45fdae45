package org.mobilemoe.hosttest;

import org.mobilemoe.MobileMoE;
import org.mobilemoe.TokenCallback;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Drives the app's {@link MobileMoE} class (the very source file the APK compiles) against the
 * host build of libmobilemoe_jni.so, in a plain JVM.
 *
 * <pre>
 * java -Dmobilemoe.jni.library=/abs/libmobilemoe_jni.so -cp CLASSES org.mobilemoe.hosttest.HostTest \
 *      --model m.pte --tokenizer tokenizer.json --prompt "..." --max-new-tokens 16 \
 *      [--expect-ids-file ids.txt] [--expect-text-file text.txt] [--expect-count N]
 * </pre>
 * Prints {@code ids: ...} (the greedy token ids), {@code text: ...}, and ends with
 * {@code HostTest: N passed, M failed}; exit status 1 when anything failed.
 */
public final class HostTest {
    private static int passed;
    private static int failed;

    private static void check(String name, boolean ok, String detail) {
        if (ok) {
            passed++;
            System.out.println("ok   " + name);
        } else {
            failed++;
            System.out.println("FAIL " + name + (detail.isEmpty() ? "" : ": " + detail));
        }
    }

    /** Collects every streamed token; optionally stops after {@code limit} tokens. */
    static final class Collector implements TokenCallback {
        final List<Integer> ids = new ArrayList<>();
        final StringBuilder text = new StringBuilder();
        final int limit;

        Collector(int limit) {
            this.limit = limit;
        }

        @Override
        public boolean onToken(int tokenId, String piece) {
            ids.add(tokenId);
            text.append(piece);
            return ids.size() < limit;
        }
    }

    private static String joinIds(List<Integer> ids) {
        StringBuilder sb = new StringBuilder();
        for (int id : ids) {
            if (sb.length() > 0) sb.append(' ');
            sb.append(id);
        }
        return sb.toString();
    }

    public static void main(String[] args) throws Exception {
        String model = null, tokenizer = null, prompt = "Once upon a time", idsFile = null, textFile = null;
        int maxNew = 16;
        int expectCount = -1;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--model": model = args[++i]; break;
                case "--tokenizer": tokenizer = args[++i]; break;
                case "--prompt": prompt = args[++i]; break;
                case "--max-new-tokens": maxNew = Integer.parseInt(args[++i]); break;
                case "--expect-ids-file": idsFile = args[++i]; break;
                case "--expect-text-file": textFile = args[++i]; break;
                case "--expect-count": expectCount = Integer.parseInt(args[++i]); break;
                default: throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (model == null || tokenizer == null) {
            throw new IllegalArgumentException("--model and --tokenizer are required");
        }

        String version = MobileMoE.version();
        check("version", version != null && !version.isEmpty(), String.valueOf(version));

        // A missing file is an IllegalArgumentException naming the path, not a crash.
        String missing = model + ".does-not-exist";
        try (MobileMoE m = new MobileMoE(missing, tokenizer, 1)) {
            check("missing model throws", false, "no exception from " + m);
        } catch (IllegalArgumentException e) {
            check("missing model throws", e.getMessage() != null && e.getMessage().contains(missing), e.getMessage());
        }
        try (MobileMoE m = new MobileMoE(model, tokenizer + ".does-not-exist", 1)) {
            check("missing tokenizer throws", false, "no exception from " + m);
        } catch (IllegalArgumentException e) {
            check("missing tokenizer throws", true, "");
        }

        MobileMoE m = new MobileMoE(model, tokenizer, 0);
        try {
            int[] promptIds = m.encode(prompt);
            check("encode", promptIds.length > 0, Arrays.toString(promptIds));

            // Greedy generation: streamed ids, stats.
            Collector c = new Collector(Integer.MAX_VALUE);
            MobileMoE.Stats s = m.generate(prompt, maxNew, c);
            System.out.println("ids: " + joinIds(c.ids));
            System.out.println("text: " + c.text);
            System.out.println("stats: " + s);
            check("generated tokens", !c.ids.isEmpty() && c.ids.size() <= maxNew, "n=" + c.ids.size());
            check("stats.generatedTokens", s.generatedTokens == c.ids.size(), s.generatedTokens + " vs " + c.ids.size());
            check("stats.promptTokens", s.promptTokens == promptIds.length, s.promptTokens + " vs " + promptIds.length);
            check("stats timings", s.prefillSeconds > 0 && s.decodeSeconds >= 0 && s.prefillTokensPerSecond() > 0, s.toString());

            if (idsFile != null) {
                String want = new String(Files.readAllBytes(Paths.get(idsFile)), StandardCharsets.UTF_8).trim()
                        .replaceAll("\\s+", " ");
                check("ids equal the Rust runner's", want.equals(joinIds(c.ids)), "runner: " + want + " | jni: " + joinIds(c.ids));
            }
            if (textFile != null) {
                // The runner also prints its StreamDecoder's final flush (an incomplete UTF-8
                // sequence at the very end, as U+FFFD), which belongs to no token: allow that tail.
                String want = new String(Files.readAllBytes(Paths.get(textFile)), StandardCharsets.UTF_8);
                String got = c.text.toString();
                boolean same = want.equals(got)
                        || (want.startsWith(got) && want.substring(got.length()).matches("\uFFFD+"));
                check("text equals the Rust runner's", same, "runner: " + want + " | jni: " + got);
            }
            if (expectCount >= 0) {
                check("token count equals the Rust runner's", expectCount == c.ids.size(),
                        "runner: " + expectCount + " | jni: " + c.ids.size());
            }

            // Deterministic: a second greedy run gives the same tokens (state is reset per call).
            Collector c2 = new Collector(Integer.MAX_VALUE);
            m.generate(prompt, maxNew, c2);
            check("greedy is repeatable", c2.ids.equals(c.ids), joinIds(c2.ids));

            // The callback's false stops generation at once.
            if (c.ids.size() >= 3) {
                Collector c3 = new Collector(2);
                MobileMoE.Stats s3 = m.generate(prompt, maxNew, c3);
                check("callback false stops", c3.ids.size() == 2 && s3.generatedTokens == 2
                        && c3.ids.equals(c.ids.subList(0, 2)), joinIds(c3.ids));
            }

            // maxNewTokens = 0 streams nothing.
            Collector c0 = new Collector(Integer.MAX_VALUE);
            MobileMoE.Stats s0 = m.generate(prompt, 0, c0);
            check("max 0 tokens", c0.ids.isEmpty() && s0.generatedTokens == 0, joinIds(c0.ids));

            // stop() from another thread.
            final MobileMoE shared = m;
            final String p = prompt;
            final int big = Math.max(maxNew, 64);
            CountDownLatch first = new CountDownLatch(1);
            AtomicReference<Object> result = new AtomicReference<>();
            List<Integer> streamed = new ArrayList<>();
            Thread t = new Thread(() -> {
                try {
                    result.set(shared.generate(p, big, 0.0f, 0L, (id, piece) -> {
                        synchronized (streamed) {
                            streamed.add(id);
                        }
                        first.countDown();
                        try {
                            Thread.sleep(20);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                        return true;
                    }));
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            t.start();
            boolean started = first.await(120, TimeUnit.SECONDS);
            m.stop();
            t.join(120_000);
            int n;
            synchronized (streamed) {
                n = streamed.size();
            }
            check("stop() from another thread", started && !t.isAlive() && result.get() instanceof MobileMoE.Stats
                    && n <= 2, "streamed " + n + ", result " + result.get());

            // An exception thrown by the callback propagates out of generate(); the model stays usable.
            try {
                m.generate(prompt, maxNew, (id, piece) -> {
                    throw new IllegalStateException("callback boom");
                });
                check("callback exception propagates", false, "no exception");
            } catch (IllegalStateException e) {
                check("callback exception propagates", "callback boom".equals(e.getMessage()), e.toString());
            }
            Collector c4 = new Collector(Integer.MAX_VALUE);
            m.generate(prompt, maxNew, c4);
            check("usable after callback exception", c4.ids.equals(c.ids), joinIds(c4.ids));

            // Sampling with a seed is reproducible.
            Collector r1 = new Collector(Integer.MAX_VALUE), r2 = new Collector(Integer.MAX_VALUE);
            m.generate(prompt, maxNew, 0.8f, 42L, r1);
            m.generate(prompt, maxNew, 0.8f, 42L, r2);
            check("seeded sampling is reproducible", !r1.ids.isEmpty() && r1.ids.equals(r2.ids),
                    joinIds(r1.ids) + " | " + joinIds(r2.ids));
        } finally {
            m.close();
        }
        m.close();  // idempotent
        try {
            m.generate(prompt, 1, new Collector(1));
            check("generate after close throws", false, "no exception");
        } catch (IllegalStateException e) {
            check("generate after close throws", true, "");
        }

        System.out.println("HostTest: " + passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
