//! Routes llama.cpp's and ggml's own logging (normally printed to stderr) into `tracing`.
//!
//! Everything goes to the `llama_cpp` target at debug level, except llama.cpp errors, which are
//! logged as warnings. Installed once per process, before the backend is initialised.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

static INSTALL: Once = Once::new();

/// Installs the log callback (idempotent).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `forward` is a valid `extern "C"` function for the whole program lifetime and
        // never unwinds; the user-data pointer is unused (null).
        #[allow(unsafe_code)]
        unsafe {
            llama_cpp_sys_2::llama_log_set(Some(forward), std::ptr::null_mut());
            llama_cpp_sys_2::ggml_log_set(Some(forward), std::ptr::null_mut());
        }
    });
}

#[allow(unsafe_code)]
unsafe extern "C" fn forward(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _user_data: *mut c_void,
) {
    let is_error = level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR;
    if !is_error && !tracing::enabled!(target: "llama_cpp", tracing::Level::DEBUG) {
        return;
    }
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a valid NUL-terminated string that outlives this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    if is_error {
        tracing::warn!(target: "llama_cpp", "{text}");
    } else {
        tracing::debug!(target: "llama_cpp", "{text}");
    }
}
