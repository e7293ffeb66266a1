//! nft's own library (libnftables, the library the `nft` command is a thin front end to), run in
//! this process: the same JSON in and out as `nft -j`, without a process start per command (~1.7
//! ms against ~5.5 ms for `nft -j list table` here; a container start reads the tables and adds
//! its port, so it paid two or three of those).
//!
//! Loaded with dlopen at first use, not linked: the binary still runs where nftables is absent
//! (networks then fail with a clear error, as they did without `nft`), and falls back to the
//! `nft` command where the library cannot be loaded. The C interface used is six functions of
//! libnftables' stable API (libnftables(3)); the one binding crate there is (`libnftables1-sys`)
//! needs bindgen and the -dev headers at build time and links the library in, which is why this
//! is written here.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use crate::{Error, Result};

/// `NFT_CTX_OUTPUT_JSON` (libnftables.h).
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Lib {
    new: CtxNew,
    free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
    output: CtxStr,
    error: CtxStr,
    set_flags: SetFlags,
    run: RunCmd,
    /// Held for as long as the process runs (the function pointers above point into it).
    _lib: libloading::Library,
}

/// One command at a time: a context is not shared, but older libnftables versions kept parser
/// state in globals.
static LOCK: Mutex<()> = Mutex::new(());

fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        if std::env::var_os("BULKHEAD_NFT_EXEC").is_some() {
            return None;
        }
        // SAFETY: libnftables' initialisers only set up its own state; the symbols are looked up
        // with the types libnftables(3) documents for them.
        unsafe {
            let l = libloading::Library::new("libnftables.so.1").ok()?;
            Some(Lib {
                new: *l.get::<CtxNew>(b"nft_ctx_new\0").ok()?,
                free: *l.get::<CtxFree>(b"nft_ctx_free\0").ok()?,
                buffer_output: *l.get::<CtxInt>(b"nft_ctx_buffer_output\0").ok()?,
                buffer_error: *l.get::<CtxInt>(b"nft_ctx_buffer_error\0").ok()?,
                output: *l.get::<CtxStr>(b"nft_ctx_get_output_buffer\0").ok()?,
                error: *l.get::<CtxStr>(b"nft_ctx_get_error_buffer\0").ok()?,
                set_flags: *l.get::<SetFlags>(b"nft_ctx_output_set_flags\0").ok()?,
                run: *l.get::<RunCmd>(b"nft_run_cmd_from_buffer\0").ok()?,
                _lib: l,
            })
        }
    })
    .as_ref()
}

/// Runs `cmd` (nft's JSON input, or a command line such as `list table inet x`) and returns what
/// nft printed (JSON). An error carries nft's own message, on one line.
pub fn run(cmd: &str) -> Result<String> {
    let Some(l) = lib() else { return exec(cmd) };
    let c = CString::new(cmd).map_err(|_| Error::Firewall("a NUL byte in an nft command".into()))?;
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: a context of our own, used by this thread alone and freed before returning; the
    // buffers it hands back are copied before it is freed.
    unsafe {
        let ctx = (l.new)(0);
        if ctx.is_null() {
            return Err(Error::Firewall("libnftables: no context".into()));
        }
        (l.buffer_output)(ctx);
        (l.buffer_error)(ctx);
        (l.set_flags)(ctx, OUTPUT_JSON);
        let rc = (l.run)(ctx, c.as_ptr());
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let (out, err) = (text((l.output)(ctx)), text((l.error)(ctx)));
        (l.free)(ctx);
        if rc == 0 {
            Ok(out)
        } else {
            Err(Error::Firewall(format!("nft: {}", one_line(&err))))
        }
    }
}

/// nft's messages span lines (the input, a caret under the fault): one line of it.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect();
    if lines.is_empty() {
        "failed".into()
    } else {
        lines.join(" | ")
    }
}

/// The same through the `nft` command (no library here).
fn exec(cmd: &str) -> Result<String> {
    use std::io::Write;
    // A listing on the command line (its output as JSON); anything else, JSON or nft's own
    // syntax over several lines, on stdin.
    let listing = cmd.trim_start().starts_with("list ") && !cmd.trim().contains('\n');
    let json_in = cmd.trim_start().starts_with('{');
    let mut c = std::process::Command::new("nft");
    if listing {
        c.arg("-j").args(cmd.split_whitespace());
    } else if json_in {
        c.args(["-j", "-f", "-"]);
    } else {
        c.args(["-f", "-"]);
    }
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Firewall(format!("nft: {e}")))?;
    if !listing {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(cmd.as_bytes())
            .map_err(|e| Error::Firewall(format!("nft: {e}")))?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().map_err(|e| Error::Firewall(format!("nft: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Firewall(format!("nft: {}", one_line(&String::from_utf8_lossy(&out.stderr)))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_become_one_line() {
        assert_eq!(
            super::one_line("Error: No such file or directory\nlist table inet x\n^^^^^^^^^^^^^^^^^\n"),
            "Error: No such file or directory | list table inet x"
        );
        assert_eq!(super::one_line(""), "failed");
    }
}
