// ClientHandle: the SafeHandle that owns one native lshm_client.
//
// Why not just a finalizer calling lshm_client_free: freeing a client shuts its worker down
// (crates/llama-shm-ffi/src/entry.rs: lshm_client_free drops the Rust Client, whose Drop runs the
// same orderly shutdown as lshm_client_shutdown). (A client of LlamaShmClient.Attach has no worker
// of its own: freeing it only detaches, at once, and lshm_client_shutdown asks the shared worker
// to exit.) That waits — for the turn (up to half the 5 s
// shutdown bound) and for the worker to exit (up to 5 s) before killing it. So it is bounded, but
// it can block for seconds, and a finalizer must not. Hence three ways to release:
//
//   Dispose (explicit)  -> lshm_client_free on the disposing thread (bounded, up to ~5 s)
//   Shutdown (explicit) -> lshm_client_shutdown on that thread; the status is kept for the caller
//   finalizer           -> the free is handed to a thread-pool thread; the finalizer returns at once
//
// SafeHandle's reference count makes a Dispose on another thread safe: a P/Invoke that holds the
// handle (a request in flight) keeps it alive, and the release runs when that call returns — never
// while the native client is still in use, which lshm_client_free's contract forbids.

using System;
using System.Threading;
using Microsoft.Win32.SafeHandles;

namespace LlamaShm
{
    internal sealed class ClientHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        private const int ReleaseInBackground = 0, ReleaseByFree = 1, ReleaseByShutdown = 2;

        private int mode = ReleaseInBackground;
        private readonly ManualResetEventSlim released = new ManualResetEventSlim(false);

        /// <summary>After a release by shutdown: lshm_client_shutdown's status and message.</summary>
        internal int ShutdownStatus { get; private set; }
        internal string ShutdownError { get; private set; }

        // Created by the marshaller for the out parameter of lshm_client_new_with / _attach.
        private ClientHandle() : base(true) { }

        /// <summary>Releases the client on this thread (now, or when a call in flight on another
        /// thread returns): by lshm_client_shutdown if <paramref name="orderly"/>, which records
        /// its status, else by lshm_client_free.</summary>
        internal void Release(bool orderly)
        {
            Interlocked.CompareExchange(ref mode, orderly ? ReleaseByShutdown : ReleaseByFree, ReleaseInBackground);
            Dispose();
        }

        /// <summary>Waits up to <paramref name="limit"/> for the release (it is deferred while a
        /// call on another thread holds the handle); returns whether it has happened.</summary>
        internal bool WaitReleased(TimeSpan limit)
        {
            return IsInvalid || released.Wait(limit);
        }

        protected override bool ReleaseHandle()
        {
            IntPtr client = handle;
            switch (Volatile.Read(ref mode))
            {
                case ReleaseByFree:
                    NativeMethods.lshm_client_free(client);
                    break;
                case ReleaseByShutdown:
                    IntPtr error;
                    ShutdownStatus = NativeMethods.lshm_client_shutdown(client, out error);
                    ShutdownError = Utf8.TakeError(error);
                    break;
                default:
                    // The finalizer (the client was never disposed): do not wait for the worker
                    // here. If the process exits before the pool runs this, the worker still
                    // ends: it exits when its control socket (held by this process) hangs up.
                    try
                    {
                        ThreadPool.UnsafeQueueUserWorkItem(FreeLater, client);
                    }
                    catch (Exception)
                    {
                        // The runtime is going down; see above.
                    }
                    break;
            }
            released.Set();
            return true;
        }

        private static void FreeLater(object client)
        {
            NativeMethods.lshm_client_free((IntPtr)client);
        }
    }
}
