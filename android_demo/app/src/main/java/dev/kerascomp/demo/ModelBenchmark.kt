package dev.kerascomp.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.os.SystemClock
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import org.json.JSONObject
import kotlin.math.exp

/** What `copy_models.py` wrote next to the models in assets/meta.json. */
data class DemoAssets(
    val models: List<String>,
    val height: Int,
    val width: Int,
    val labels: List<String>,
    val trueLabel: String?,
    val runs: Int,
    val warmupRuns: Int,
) {
    companion object {
        fun load(context: Context): DemoAssets {
            val meta = JSONObject(context.assets.open("meta.json").bufferedReader().use { it.readText() })
            val input = meta.getJSONArray("input_shape")
            val models = meta.getJSONArray("models")
            val labels = meta.getJSONArray("labels")
            return DemoAssets(
                models = List(models.length()) { models.getString(it) },
                height = input.getInt(0),
                width = input.getInt(1),
                labels = List(labels.length()) { labels.getString(it) },
                // optString returns the text "null" for a JSON null (what copy_models.py --image writes)
                trueLabel = if (meta.isNull("true_label")) null else meta.getString("true_label").ifEmpty { null },
                runs = meta.optInt("runs", 100),
                warmupRuns = meta.optInt("warmup_runs", 10),
            )
        }
    }
}

data class Timing(
    val model: String,
    val accelerator: String,
    val medianMs: Double?,
    val p90Ms: Double?,
    val top1: String?,
    val confidence: Float?,
    val error: String? = null,
)

/** Times each model on each accelerator with the LiteRT CompiledModel API and classifies one image. */
class ModelBenchmark(private val context: Context, private val assets: DemoAssets) {

    /** The bundled sample image as float32 RGB in 0..255, height x width x 3 (the exported model rescales itself). */
    fun sampleInput(): FloatArray {
        val decoded = context.assets.open("sample.png").use { BitmapFactory.decodeStream(it) }
        val image = Bitmap.createScaledBitmap(decoded, assets.width, assets.height, true)
        val pixels = IntArray(assets.width * assets.height)
        image.getPixels(pixels, 0, assets.width, 0, 0, assets.width, assets.height)
        val input = FloatArray(pixels.size * 3)
        for ((i, pixel) in pixels.withIndex()) {
            input[3 * i] = ((pixel shr 16) and 0xFF).toFloat()
            input[3 * i + 1] = ((pixel shr 8) and 0xFF).toFloat()
            input[3 * i + 2] = (pixel and 0xFF).toFloat()
        }
        return input
    }

    fun run(model: String, accelerator: Accelerator, input: FloatArray): Timing {
        val compiled = try {
            CompiledModel.create(context.assets, model, CompiledModel.Options(accelerator))
        } catch (error: Exception) {
            return Timing(model, accelerator.name, null, null, null, null, "unavailable: ${error.message}")
        }
        val inputs = compiled.createInputBuffers()
        val outputs = compiled.createOutputBuffers()
        try {
            inputs[0].writeFloat(input)
            repeat(assets.warmupRuns) { compiled.run(inputs, outputs) }
            val timesMs = DoubleArray(assets.runs)
            for (i in 0 until assets.runs) {
                val start = SystemClock.elapsedRealtimeNanos()
                compiled.run(inputs, outputs)
                timesMs[i] = (SystemClock.elapsedRealtimeNanos() - start) / 1e6
            }
            timesMs.sort()
            val scores = outputs[0].readFloat()
            val best = scores.indices.maxByOrNull { scores[it] } ?: 0
            return Timing(
                model, accelerator.name,
                medianMs = timesMs[timesMs.size / 2],
                p90Ms = timesMs[((timesMs.size - 1) * 9) / 10],
                top1 = assets.labels.getOrElse(best) { "class $best" },
                confidence = softmax(scores)[best],
            )
        } finally {
            inputs.forEach { it.close() }
            outputs.forEach { it.close() }
            compiled.close()
        }
    }

    private fun softmax(logits: FloatArray): FloatArray {
        val top = logits.maxOrNull() ?: 0f
        val e = logits.map { exp((it - top).toDouble()) }
        val total = e.sum()
        return FloatArray(logits.size) { (e[it] / total).toFloat() }
    }
}
