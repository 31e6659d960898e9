// RequestRun: the cancellation of one request in flight.
//
// lshm_cancel reaches only a request the native client has already registered as in flight; a
// cancel that comes just before (the token fired while the call was being entered) would be lost.
// So a cancel that finds nothing in flight is retried every RetryPeriod until it reaches the
// request or the call has returned: a cancel is never lost.
//
// Nor may it outlive its request: the canceller is the client's, so an lshm_cancel issued after
// this request's call returned would cancel the client's next request. Every lshm_cancel is
// therefore issued under `sync` after checking `finished`, and Finish sets `finished` under the
// same lock: once Finish has returned no lshm_cancel of this run is running or can start, and
// the next request starts only after Finish. (lshm_cancel never blocks, so holding the lock
// across it is cheap; Timer.Dispose does not wait for a callback that is running, the lock does.)
//
//   token fires ─┐
//   Cancel() ────┼─> Request(reason) ─> lshm_cancel ─ in flight ─> done
//   Dispose() ───┘                           └─ not yet ─> timer: retry until in flight or Finish

using System;
using System.Threading;

namespace LlamaShm
{
    internal sealed class RequestRun
    {
        private static readonly TimeSpan RetryPeriod = TimeSpan.FromMilliseconds(1);

        private readonly CancellerHandle canceller;
        private readonly CancellationToken token;
        private readonly object sync = new object();
        private CancellationTokenRegistration registration;
        private Timer retry;
        private bool finished;
        private string reason;

        internal RequestRun(CancellerHandle canceller, CancellationToken token)
        {
            this.canceller = canceller;
            this.token = token;
        }

        /// <summary>Starts listening to the token (it may fire at once, on this thread).</summary>
        internal void Listen()
        {
            if (token.CanBeCanceled)
                registration = token.Register(s => ((RequestRun)s).Request("its CancellationToken was cancelled"), this);
        }

        /// <summary>Why the request was cancelled from this side (null if it was not).</summary>
        internal string Reason
        {
            get { lock (sync) return reason; }
        }

        /// <summary>Cancels the request (from any thread); <paramref name="why"/> names the cause
        /// in the exception the caller gets. Only the first cause is kept.</summary>
        internal void Request(string why)
        {
            lock (sync)
            {
                if (finished)
                    return;
                if (reason == null)
                    reason = why;
                if (!TryCancelLocked() && retry == null)
                    retry = new Timer(s => ((RequestRun)s).Retry(), this, RetryPeriod, RetryPeriod);
            }
        }

        /// <summary>The call has returned: stop listening and retrying. Waits for an lshm_cancel
        /// of this run that is being issued (the lock) and for a token callback that is running
        /// (both are short: one lshm_cancel).</summary>
        internal void Finish()
        {
            lock (sync)
            {
                finished = true;
                if (retry != null)
                    retry.Dispose();
                retry = null;
            }
            registration.Dispose();
        }

        private void Retry()
        {
            lock (sync)
            {
                if (TryCancelLocked() && retry != null)
                {
                    retry.Dispose();
                    retry = null;
                }
            }
        }

        /// <summary>One lshm_cancel, under <c>sync</c>; true when nothing is left to do (it
        /// reached the request, the call has returned, or the client is gone).</summary>
        private bool TryCancelLocked()
        {
            if (finished)
                return true;
            try
            {
                int inFlight;
                return NativeMethods.lshm_cancel(canceller, out inFlight) != (int)LshmStatus.Ok || inFlight != 0;
            }
            catch (ObjectDisposedException)
            {
                return true;
            }
        }
    }
}
