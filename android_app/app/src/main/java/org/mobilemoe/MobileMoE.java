package org.mobilemoe;

import java.io.Closeable;

/**
 * A MobileMoE language model: a {@code .pte} program run by ExecuTorch with the MobileMoE backend,
 * plus its {@code tokenizer.json}. Backed by the Rust library {@code libmobilemoe_jni.so}, which
 * runs the same generation loop as the {@code mobilemoe generate} command-line runner.
 *
 * <p>Thread safety: {@link #generate}, {@link #encode} and {@link #close} are serialized on this
 * object (close waits for a running generation); {@link #stop} may be called from any thread.
 */
public final class MobileMoE implements Closeable {
    /** System property: absolute path of the JNI library to load instead of {@code mobilemoe_jni}. */
    public static final String LIBRARY_PATH_PROPERTY = "mobilemoe.jni.library";

    static {
        String path = System.getProperty(LIBRARY_PATH_PROPERTY);
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("mobilemoe_jni");
        }
    }

    /** Timing of one {@link #generate} call. */
    public static final class Stats {
        public final int promptTokens;
        public final int generatedTokens;
        /** Wall time of the prompt (prefill) forward pass, seconds. */
        public final double prefillSeconds;
        /** Wall time of all single-token (decode) steps, seconds. */
        public final double decodeSeconds;
        /** Number of decode steps timed in {@link #decodeSeconds}. */
        public final int decodeSteps;

        Stats(double[] raw) {
            promptTokens = (int) raw[0];
            generatedTokens = (int) raw[1];
            prefillSeconds = raw[2];
            decodeSeconds = raw[3];
            decodeSteps = (int) raw[4];
        }

        public double prefillTokensPerSecond() {
            return prefillSeconds > 0 ? promptTokens / prefillSeconds : 0.0;
        }

        public double decodeTokensPerSecond() {
            return decodeSeconds > 0 ? decodeSteps / decodeSeconds : 0.0;
        }

        @Override
        public String toString() {
            return String.format(java.util.Locale.ROOT,
                    "prompt %d tokens, prefill %.1f tok/s; generated %d tokens, decode %.1f tok/s",
                    promptTokens, prefillTokensPerSecond(), generatedTokens, decodeTokensPerSecond());
        }
    }

    private long handle;
    private volatile boolean stopRequested;

    /**
     * Loads a program and its tokenizer.
     *
     * @param modelPath     path of the {@code .pte} file (memory-mapped, not copied)
     * @param tokenizerPath path of the Hugging Face {@code tokenizer.json}
     * @param numThreads    worker threads of the MoE kernels (process-wide); 0 = default: the
     *                      performance cores (CPUs whose max frequency is at least 80% of the
     *                      fastest's), or all CPUs when they are alike
     * @throws IllegalArgumentException when a file cannot be read or is not a valid program or
     *                                  tokenizer, or needs a newer library (the message says
     *                                  which and why)
     * @throws OutOfMemoryError         when the program's buffers cannot be allocated
     * @throws RuntimeException         on an internal error of the native library (a bug)
     */
    public MobileMoE(String modelPath, String tokenizerPath, int numThreads) {
        if (modelPath == null || tokenizerPath == null) {
            throw new NullPointerException("modelPath and tokenizerPath are required");
        }
        handle = nativeLoad(modelPath, tokenizerPath, numThreads);
    }

    /**
     * Generates up to {@code maxNewTokens} tokens after {@code prompt}, streaming each to
     * {@code callback}. Stops early at the end-of-text token, when the callback returns false,
     * or when {@link #stop} is called.
     *
     * @param temperature 0 = greedy (deterministic); otherwise sampling with this temperature
     * @param seed        random seed for sampling (ignored when greedy)
     * @throws IllegalStateException when the model is closed or the program fails to execute
     * @throws OutOfMemoryError      when a buffer of the program cannot be allocated
     * @throws RuntimeException      on an internal error of the native library (a bug)
     */
    public synchronized Stats generate(String prompt, int maxNewTokens, float temperature, long seed,
                                       TokenCallback callback) {
        if (prompt == null || callback == null) {
            throw new NullPointerException("prompt and callback are required");
        }
        if (maxNewTokens < 0) {
            throw new IllegalArgumentException("maxNewTokens < 0");
        }
        long h = checkOpen();
        stopRequested = false;
        TokenCallback cb = (tokenId, text) -> callback.onToken(tokenId, text) && !stopRequested;
        return new Stats(nativeGenerate(h, prompt, maxNewTokens, temperature, seed, cb));
    }

    /** Greedy generation. */
    public Stats generate(String prompt, int maxNewTokens, TokenCallback callback) {
        return generate(prompt, maxNewTokens, 0.0f, 0L, callback);
    }

    /** Token ids of {@code text} (no special tokens added). */
    public synchronized int[] encode(String text) {
        return nativeEncode(checkOpen(), text);
    }

    /**
     * Asks a running {@link #generate} to stop after the token being computed; safe from any
     * thread (a Java flag checked at each token, so no native state is touched here).
     */
    public void stop() {
        stopRequested = true;
    }

    /** Frees the native model. Idempotent. */
    @Override
    public synchronized void close() {
        if (handle != 0) {
            long h = handle;
            handle = 0;
            nativeFree(h);
        }
    }

    /** Version string of the native library (crate version and blob format version). */
    public static String version() {
        return nativeVersion();
    }

    private long checkOpen() {
        if (handle == 0) {
            throw new IllegalStateException("MobileMoE is closed");
        }
        return handle;
    }

    private static native String nativeVersion();

    private static native long nativeLoad(String modelPath, String tokenizerPath, int numThreads);

    private static native double[] nativeGenerate(long handle, String prompt, int maxNewTokens,
                                                  float temperature, long seed, TokenCallback callback);

    private static native int[] nativeEncode(long handle, String text);

    private static native void nativeFree(long handle);
}
