// Graceful stop on SIGTERM / SIGINT: the handler only sets a flag; the training loop finishes the
// step in flight, writes a checkpoint and exits 0 (cluster schedulers send SIGTERM before a kill).
#pragma once

namespace msa {

// Installs the handlers (idempotent).
void install_stop_signal_handlers();
// True once SIGTERM or SIGINT arrived.
bool stop_requested();
// The signal that asked to stop (0 when none), for the exit message.
int stop_signal_number();

}  // namespace msa
