//! JNI layer of the MobileMoE Android app: the native methods of `org.mobilemoe.MobileMoE`
//! (android_app/app/src/main/java/org/mobilemoe/MobileMoE.java).
//!
//! Everything model-related is delegated to [`engine`], which is a thin adapter over the
//! `mobilemoe-runner` crate (runtime wrapper, tokenizer, generation loop): the app runs the same
//! code as the `mobilemoe generate` command-line runner.
//!
//! Conventions: a model is a `Box<Engine>` whose raw pointer is the Java `long handle`; no panic
//! and no Rust error crosses into the JVM (each entry point catches panics and throws a Java
//! exception instead); a Java exception thrown by the token callback stops generation and is left
//! pending, so it propagates out of `generate()` unchanged.

mod engine;

use std::panic::{catch_unwind, AssertUnwindSafe};

use jni::objects::{JClass, JObject, JString, JValue};
use jni::sys::{jdoubleArray, jfloat, jint, jintArray, jlong, jstring};
use jni::JNIEnv;
use mobilemoe_executorch::capi::panic_message;

pub use engine::{Engine, EngineError, GenerateParams, Stats};

const ILLEGAL_ARGUMENT: &str = "java/lang/IllegalArgumentException";
const ILLEGAL_STATE: &str = "java/lang/IllegalStateException";
const RUNTIME: &str = "java/lang/RuntimeException";
const OUT_OF_MEMORY: &str = "java/lang/OutOfMemoryError";

/// The Java exception for a failed call: an internal error (a caught panic on the native side, as
/// in `guarded`) is a `RuntimeException`, a failed allocation an `OutOfMemoryError`; every other
/// cause keeps the class the method documents (`documented`: IllegalArgumentException for load,
/// IllegalStateException for generate).
fn exception_class(e: &EngineError, documented: &'static str) -> &'static str {
    use mobilemoe_runner::runtime::et_error;
    match e.executorch {
        Some(et_error::INTERNAL) => RUNTIME,
        Some(et_error::MEMORY_ALLOCATION_FAILED) => OUT_OF_MEMORY,
        _ => documented,
    }
}

/// Throws `class(msg)` unless an exception is already pending (which then wins).
fn throw(env: &mut JNIEnv, class: &str, msg: &str) {
    if env.exception_check().unwrap_or(true) {
        return;
    }
    let _ = env.throw_new(class, msg);
}

/// Runs `f`, turning a panic into a `RuntimeException` and returning `default`.
fn guarded<'local, T>(env: &mut JNIEnv<'local>, default: T, f: impl FnOnce(&mut JNIEnv<'local>) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(v) => v,
        Err(p) => {
            throw(env, RUNTIME, &format!("mobilemoe native panic: {}", panic_message(&*p)));
            default
        }
    }
}

fn java_string(env: &mut JNIEnv, s: &JString) -> Result<String, String> {
    if s.is_null() {
        return Err("null string".into());
    }
    env.get_string(s).map(Into::into).map_err(|e| format!("invalid Java string: {e}"))
}

/// # Safety
/// `handle` is 0 or a value returned by `nativeLoad` and not yet passed to `nativeFree`
/// (MobileMoE.java guarantees this: the handle is only used under the object's lock).
unsafe fn engine_mut<'a>(handle: jlong) -> Option<&'a mut Engine> {
    (handle as *mut Engine).as_mut()
}

#[no_mangle]
pub extern "system" fn Java_org_mobilemoe_MobileMoE_nativeVersion<'local>(mut env: JNIEnv<'local>, _class: JClass<'local>) -> jstring {
    guarded(&mut env, std::ptr::null_mut(), |env| match env.new_string(engine::version()) {
        Ok(s) => s.into_raw(),
        Err(_) => std::ptr::null_mut(),
    })
}

#[no_mangle]
pub extern "system" fn Java_org_mobilemoe_MobileMoE_nativeLoad<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    model_path: JString<'local>,
    tokenizer_path: JString<'local>,
    num_threads: jint,
) -> jlong {
    guarded(&mut env, 0, |env| {
        let paths = java_string(env, &model_path).and_then(|m| Ok((m, java_string(env, &tokenizer_path)?)));
        let (model, tokenizer) = match paths {
            Ok(p) => p,
            Err(e) => {
                throw(env, ILLEGAL_ARGUMENT, &e);
                return 0;
            }
        };
        match Engine::load(&model, &tokenizer, num_threads.max(0) as usize) {
            Ok(e) => Box::into_raw(Box::new(e)) as jlong,
            Err(e) => {
                throw(env, exception_class(&e, ILLEGAL_ARGUMENT), &e.message);
                0
            }
        }
    })
}

#[no_mangle]
pub extern "system" fn Java_org_mobilemoe_MobileMoE_nativeFree<'local>(mut env: JNIEnv<'local>, _class: JClass<'local>, handle: jlong) {
    guarded(&mut env, (), |_| {
        if handle != 0 {
            // SAFETY: see engine_mut; Java zeroes its handle before calling this, so this runs once.
            drop(unsafe { Box::from_raw(handle as *mut Engine) });
        }
    })
}

#[no_mangle]
pub extern "system" fn Java_org_mobilemoe_MobileMoE_nativeEncode<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    text: JString<'local>,
) -> jintArray {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: see engine_mut.
        let Some(engine) = (unsafe { engine_mut(handle) }) else {
            throw(env, ILLEGAL_STATE, "MobileMoE is closed");
            return std::ptr::null_mut();
        };
        let text = match java_string(env, &text) {
            Ok(t) => t,
            Err(e) => {
                throw(env, ILLEGAL_ARGUMENT, &e);
                return std::ptr::null_mut();
            }
        };
        let ids = match engine.encode(&text) {
            Ok(ids) => ids,
            Err(e) => {
                throw(env, ILLEGAL_ARGUMENT, &e);
                return std::ptr::null_mut();
            }
        };
        let ids: Vec<jint> = ids.iter().map(|&i| i as jint).collect();
        match env.new_int_array(ids.len() as i32) {
            Ok(arr) => {
                if env.set_int_array_region(&arr, 0, &ids).is_err() {
                    return std::ptr::null_mut();
                }
                arr.into_raw()
            }
            Err(_) => std::ptr::null_mut(),
        }
    })
}

/// Calls `callback.onToken(id, piece)`; `Ok(false)` = the callback asked to stop;
/// `Err(())` = a Java exception is pending.
fn call_on_token(env: &mut JNIEnv, callback: &JObject, id: u32, piece: &str) -> Result<bool, ()> {
    let jpiece = env.new_string(piece).map_err(|_| ())?;
    let r = env.call_method(callback, "onToken", "(ILjava/lang/String;)Z", &[JValue::Int(id as jint), JValue::Object(&jpiece)]);
    // One local reference per token: release it, a long generation would overflow the table.
    let _ = env.delete_local_ref(jpiece);
    match r.and_then(|v| v.z()) {
        Ok(keep_going) => Ok(keep_going),
        Err(_) => {
            if !env.exception_check().unwrap_or(true) {
                let _ = env.throw_new(RUNTIME, "TokenCallback.onToken could not be called");
            }
            Err(())
        }
    }
}

#[no_mangle]
pub extern "system" fn Java_org_mobilemoe_MobileMoE_nativeGenerate<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    prompt: JString<'local>,
    max_new_tokens: jint,
    temperature: jfloat,
    seed: jlong,
    callback: JObject<'local>,
) -> jdoubleArray {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: see engine_mut.
        let Some(engine) = (unsafe { engine_mut(handle) }) else {
            throw(env, ILLEGAL_STATE, "MobileMoE is closed");
            return std::ptr::null_mut();
        };
        if callback.is_null() {
            throw(env, ILLEGAL_ARGUMENT, "callback is null");
            return std::ptr::null_mut();
        }
        let prompt = match java_string(env, &prompt) {
            Ok(p) => p,
            Err(e) => {
                throw(env, ILLEGAL_ARGUMENT, &e);
                return std::ptr::null_mut();
            }
        };
        let params = GenerateParams { max_new_tokens: max_new_tokens.max(0) as usize, temperature, seed: seed as u64 };
        let mut java_failed = false;
        let result = engine.generate(&prompt, &params, &mut |id, piece| match call_on_token(env, &callback, id, piece) {
            Ok(keep_going) => keep_going,
            Err(()) => {
                java_failed = true;
                false
            }
        });
        if java_failed {
            return std::ptr::null_mut(); // the callback's exception is pending
        }
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                throw(env, exception_class(&e, ILLEGAL_STATE), &e.message);
                return std::ptr::null_mut();
            }
        };
        let raw = [
            stats.prompt_tokens as f64,
            stats.generated_tokens as f64,
            stats.prefill_seconds,
            stats.decode_seconds,
            stats.decode_steps as f64,
        ];
        match env.new_double_array(raw.len() as i32) {
            Ok(arr) => {
                if env.set_double_array_region(&arr, 0, &raw).is_err() {
                    return std::ptr::null_mut();
                }
                arr.into_raw()
            }
            Err(_) => std::ptr::null_mut(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mobilemoe_runner::runtime::et_error;

    /// The codes the backend returns reach Java as: Internal -> RuntimeException (like a panic
    /// caught here), MemoryAllocationFailed -> OutOfMemoryError, anything else (invalid program,
    /// not supported, invalid argument, no code) -> the class the method documents.
    #[test]
    fn executorch_errors_pick_the_java_exception() {
        let e = |code: Option<u32>| EngineError { executorch: code, message: "m".into() };
        assert_eq!(exception_class(&e(Some(et_error::INTERNAL)), ILLEGAL_STATE), RUNTIME);
        assert_eq!(exception_class(&e(Some(et_error::MEMORY_ALLOCATION_FAILED)), ILLEGAL_ARGUMENT), OUT_OF_MEMORY);
        for code in [Some(et_error::INVALID_PROGRAM), Some(et_error::NOT_SUPPORTED), Some(et_error::INVALID_ARGUMENT), None] {
            assert_eq!(exception_class(&e(code), ILLEGAL_ARGUMENT), ILLEGAL_ARGUMENT, "{code:?}");
            assert_eq!(exception_class(&e(code), ILLEGAL_STATE), ILLEGAL_STATE, "{code:?}");
        }
    }
}
