package dev.kerascomp.demo

import android.app.Activity
import android.graphics.Typeface
import android.os.Bundle
import android.widget.ScrollView
import android.widget.TextView
import com.google.ai.edge.litert.Accelerator
import java.util.Locale

/**
 * Runs the original and the kerascomp-compressed .tflite from assets on the CPU (XNNPACK) and,
 * where the phone has one, the GPU; shows median latencies and the speedup.
 */
class MainActivity : Activity() {

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val text = TextView(this).apply {
            typeface = Typeface.MONOSPACE
            textSize = 13f
            setPadding(32, 32, 32, 32)
            this.text = "Timing models... (keep the screen on)"
        }
        setContentView(ScrollView(this).apply { addView(text) })
        Thread {
            val report = try {
                benchmarkReport()
            } catch (error: Exception) {
                "Failed: $error\n\nDid you run android_demo/copy_models.py?"
            }
            runOnUiThread { text.text = report }
        }.start()
    }

    private fun benchmarkReport(): String {
        val assets = DemoAssets.load(this)
        val benchmark = ModelBenchmark(this, assets)
        val input = benchmark.sampleInput()
        val lines = mutableListOf(
            "Sample image: true label ${assets.trueLabel ?: "unknown"}",
            "${assets.runs} timed runs after ${assets.warmupRuns} warm-up runs, one model at a time",
            "",
        )
        for (accelerator in listOf(Accelerator.CPU, Accelerator.GPU)) {
            val timings = assets.models.map { benchmark.run(it, accelerator, input) }
            lines += "== ${accelerator.name} =="
            for (t in timings) {
                lines += if (t.error != null) {
                    "${t.model}: ${t.error}"
                } else {
                    String.format(
                        Locale.ROOT, "%s: median %.3f ms, p90 %.3f ms -> %s (%.0f%%)",
                        t.model, t.medianMs, t.p90Ms, t.top1, 100 * (t.confidence ?: 0f),
                    )
                }
            }
            val original = timings.firstOrNull()?.medianMs
            for (t in timings.drop(1)) {
                if (original != null && t.medianMs != null) {
                    lines += String.format(Locale.ROOT, "speedup of %s: %.2fx", t.model, original / t.medianMs)
                }
            }
            lines += ""
        }
        return lines.joinToString("\n")
    }
}
