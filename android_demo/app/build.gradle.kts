plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.kerascomp.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.kerascomp.demo"
        minSdk = 24 // the LiteRT 2.3 AARs declare minSdk 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    // .tflite files are memory-mapped from the APK, so they must be stored uncompressed.
    androidResources {
        noCompress += "tflite"
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:2.3.0")
    // The GPU accelerator is a separate artifact since LiteRT 2.3; without it GPU runs are reported as unavailable.
    implementation("com.google.ai.edge.litert:litert-gpu:2.3.0")
}
