// CancellerHandle: the SafeHandle that owns one lshm_canceller. Freeing a canceller never waits
// (it drops a reference), so the finalizer may free it directly. It may outlive its client: a
// cancel then reaches nothing.

using Microsoft.Win32.SafeHandles;

namespace LlamaShm
{
    internal sealed class CancellerHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        // Created by the marshaller for lshm_canceller_new's out parameter.
        private CancellerHandle() : base(true) { }

        protected override bool ReleaseHandle()
        {
            NativeMethods.lshm_canceller_free(handle);
            return true;
        }
    }
}
