package org.mobilemoe;

/**
 * Receives generated tokens as they are produced, on the thread that called
 * {@link MobileMoE#generate}.
 */
public interface TokenCallback {
    /**
     * One generated token.
     *
     * @param tokenId the token id
     * @param text    the text this token completes: UTF-8 characters split across byte-level BPE
     *                tokens are held back until complete, so this may be empty, and concatenating
     *                every piece gives the decoded output
     * @return {@code true} to continue, {@code false} to stop generating after this token
     */
    boolean onToken(int tokenId, String text);
}
