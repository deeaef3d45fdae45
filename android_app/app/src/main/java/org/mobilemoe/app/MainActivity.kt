package org.mobilemoe.app

import android.app.Activity
import android.os.Bundle
import android.util.Log
import android.view.View
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import org.mobilemoe.MobileMoE
import org.mobilemoe.TokenCallback
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * One screen: a prompt box, Generate/Stop, the streamed output and prefill/decode tokens/s.
 *
 * The model (`model.pte`) and tokenizer (`tokenizer.json`) are read from app-specific storage,
 * pushed there with adb (docs/android.md): first the external app directory
 * (/sdcard/Android/data/org.mobilemoe.app/files), then the internal one (files/, via run-as).
 * Loading and generation run on one worker thread; tokens are appended on the UI thread.
 */
class MainActivity : Activity() {
    private lateinit var status: TextView
    private lateinit var prompt: EditText
    private lateinit var maxTokens: EditText
    private lateinit var generateButton: Button
    private lateinit var stopButton: Button
    private lateinit var stats: TextView
    private lateinit var output: TextView
    private lateinit var outputScroll: ScrollView

    /** Owns the model: every native call happens on this one thread. */
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()

    @Volatile
    private var model: MobileMoE? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        prompt = findViewById(R.id.prompt)
        maxTokens = findViewById(R.id.max_tokens)
        generateButton = findViewById(R.id.generate)
        stopButton = findViewById(R.id.stop)
        stats = findViewById(R.id.stats)
        output = findViewById(R.id.output)
        outputScroll = findViewById(R.id.output_scroll)

        generateButton.setOnClickListener { startGeneration() }
        stopButton.setOnClickListener { model?.stop() }
        loadModel()
    }

    override fun onDestroy() {
        model?.stop()
        worker.execute {
            model?.close()
            model = null
        }
        worker.shutdown()
        super.onDestroy()
    }

    /** The first directory holding both files, or null. */
    private fun findModelDir(): File? {
        val candidates = listOfNotNull(getExternalFilesDir(null), filesDir)
        return candidates.firstOrNull { File(it, MODEL_FILE).isFile && File(it, TOKENIZER_FILE).isFile }
    }

    private fun loadModel() {
        val dir = findModelDir()
        if (dir == null) {
            val pushDir = getExternalFilesDir(null) ?: filesDir
            status.text = getString(R.string.status_missing, pushDir.absolutePath)
            return
        }
        val modelFile = File(dir, MODEL_FILE)
        status.text = getString(R.string.status_loading, modelFile.absolutePath)
        worker.execute {
            try {
                val loaded = MobileMoE(modelFile.absolutePath, File(dir, TOKENIZER_FILE).absolutePath, 0)
                model = loaded
                runOnUiThread {
                    status.text = getString(R.string.status_ready, modelFile.absolutePath)
                    generateButton.isEnabled = true
                }
            } catch (e: RuntimeException) {
                Log.e(TAG, "load failed", e)
                runOnUiThread { status.text = getString(R.string.status_error, e.message) }
            }
        }
    }

    private fun startGeneration() {
        val m = model ?: return
        val text = prompt.text.toString()
        val limit = maxTokens.text.toString().toIntOrNull()?.coerceIn(1, 4096) ?: DEFAULT_MAX_TOKENS
        generateButton.isEnabled = false
        stopButton.isEnabled = true
        output.text = text
        stats.text = getString(R.string.status_generating)
        worker.execute {
            try {
                val result = m.generate(text, limit, TokenCallback { _, piece ->
                    if (piece.isNotEmpty()) {
                        runOnUiThread {
                            output.append(piece)
                            outputScroll.fullScroll(View.FOCUS_DOWN)
                        }
                    }
                    true
                })
                Log.i(TAG, result.toString())
                runOnUiThread {
                    stats.text = getString(
                        R.string.stats_format,
                        result.promptTokens, result.prefillTokensPerSecond(),
                        result.generatedTokens, result.decodeTokensPerSecond()
                    )
                }
            } catch (e: RuntimeException) {
                Log.e(TAG, "generation failed", e)
                runOnUiThread { stats.text = getString(R.string.status_error, e.message) }
            } finally {
                runOnUiThread {
                    generateButton.isEnabled = true
                    stopButton.isEnabled = false
                }
            }
        }
    }

    companion object {
        private const val TAG = "MobileMoE"
        const val MODEL_FILE = "model.pte"
        const val TOKENIZER_FILE = "tokenizer.json"
        private const val DEFAULT_MAX_TOKENS = 128
    }
}
