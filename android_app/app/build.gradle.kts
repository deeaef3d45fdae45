// MobileMoE demo app: one activity, a prompt box, streamed output, prefill/decode tokens/s.
//
// Native code: the Rust JNI crate in ../native (libmobilemoe_jni.so) is built by cargo-ndk
// (task `cargoNdkBuild`, run before every build) into build/rustJniLibs/<abi>/, which is a
// jniLibs source folder. It statically links the ExecuTorch runtime built for Android
// (see docs/android.md: EXECUTORCH_ANDROID_PREFIX), and cargo-ndk copies libc++_shared.so
// next to it. arm64-v8a only.
import java.util.Properties

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val localProps = Properties().apply {
    val f = rootProject.file("local.properties")
    if (f.exists()) f.inputStream().use { load(it) }
}

/** A setting from a Gradle property, local.properties, or the environment (in that order). */
fun setting(name: String, envName: String): String? =
    (project.findProperty(name) as String?) ?: localProps.getProperty(name) ?: System.getenv(envName)

android {
    namespace = "org.mobilemoe.app"
    compileSdk = 34
    ndkVersion = "27.2.12479018"

    defaultConfig {
        applicationId = "org.mobilemoe.app"
        minSdk = 26
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // Sign with the debug key so `assembleRelease` installs on a test phone as is.
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }

    sourceSets["main"].jniLibs.srcDir(layout.buildDirectory.dir("rustJniLibs"))

    packaging {
        jniLibs {
            // Keep .so files uncompressed and page-aligned in the APK.
            useLegacyPackaging = false
        }
    }
}

// Build ../native with cargo-ndk for arm64-v8a (release: the debug build is ~10x slower).
// Requires: rustup target add aarch64-linux-android; cargo install cargo-ndk; an NDK (ndkVersion
// above, or ANDROID_NDK_HOME); EXECUTORCH_ANDROID_PREFIX = ExecuTorch's Android install prefix.
val cargoNdkBuild = tasks.register<Exec>("cargoNdkBuild") {
    group = "build"
    description = "Builds libmobilemoe_jni.so with cargo-ndk"
    val outDir = layout.buildDirectory.dir("rustJniLibs").get().asFile
    workingDir = rootProject.file("native")
    // The NDK: ANDROID_NDK_HOME / android.ndkHome, else the SDK's ndk/<ndkVersion>.
    val ndkHome = setting("android.ndkHome", "ANDROID_NDK_HOME")
        ?: runCatching { android.ndkDirectory.absolutePath }.getOrNull()
    ndkHome?.let { environment("ANDROID_NDK_HOME", it) }
    setting("executorch.androidPrefix", "EXECUTORCH_ANDROID_PREFIX")?.let {
        environment("EXECUTORCH_ANDROID_PREFIX", it)
    }
    commandLine(
        setting("cargo", "CARGO") ?: "cargo",
        "ndk", "-t", "arm64-v8a", "--platform", "26",
        "-o", outDir.absolutePath,
        "build", "--release",
    )
    outputs.dir(outDir)
    // The crate depends on ../../backend and ../../ops by path: let cargo decide what is stale.
    outputs.upToDateWhen { false }
}

tasks.named("preBuild") { dependsOn(cargoNdkBuild) }

dependencies {
    // No AndroidX, no Kotlin coroutines: the app uses android.app.Activity and one worker thread,
    // so the whole Java/Kotlin layer compiles against android.jar alone.
}
