//! The serial console's host side: input is read on the iothread (an fd handler
//! on its context) and fed to the PL011's receive FIFO as space allows; the
//! escape sequence (Ctrl-A x on stdio) asks the machine to quit.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::console::{ConsoleInput, InputEvent};
use devices::pl011::Pl011;
use event_loop::AioContext;

use crate::vcpu::VmEvent;

/// Registers `input` on `ctx`. Bytes the FIFO cannot take yet wait in a queue
/// that a bottom half drains whenever the guest frees FIFO space.
pub fn attach_input(
    ctx: &Arc<AioContext>,
    mut input: ConsoleInput,
    uart: Arc<Mutex<Pl011>>,
    events: Sender<VmEvent>,
) -> Result<(), event_loop::Error> {
    let pending: Arc<Mutex<VecDeque<u8>>> = Arc::default();
    let pump = {
        let pending = Arc::clone(&pending);
        let uart = Arc::clone(&uart);
        move || {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.is_empty() {
                return;
            }
            let taken = uart
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(pending.make_contiguous());
            pending.drain(..taken);
        }
    };
    let space_bh = ctx.new_bh("console-rx-space", pump.clone());
    // Called by the PL011 with its own lock held (guest read of DR): only
    // schedule, never touch the UART here.
    uart.lock()
        .unwrap_or_else(|p| p.into_inner())
        .set_rx_space_callback(Box::new(move || space_bh.schedule()));

    let fd = input.fd();
    let weak_ctx = Arc::downgrade(ctx);
    ctx.set_fd_handler(
        fd,
        Some(Box::new(move || match input.read_event() {
            Ok(InputEvent::Bytes(bytes)) => {
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(bytes);
                pump();
            }
            Ok(InputEvent::Quit(bytes)) => {
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(bytes);
                pump();
                let _ = events.send(VmEvent::Quit);
            }
            Ok(InputEvent::Eof) => {
                log::debug!("console input closed");
                if let Some(ctx) = weak_ctx.upgrade() {
                    ctx.remove_fd_handler(fd);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("console input: {e}; no more input");
                if let Some(ctx) = weak_ctx.upgrade() {
                    ctx.remove_fd_handler(fd);
                }
            }
        })),
        None,
    )
}
