"""Models no test contains (BERT-MLM with a mask and labels, T5 with labels, a ConvNeXt-like CNN
with BatchNorm and Dropout2d), checked with meters of their own: gradients, buffers and
state_dict against the unmodified model, and the CPU allocator's peak read from the profiler's
flat kineto `[memory]` events (not through fxckpt.measure), against the plan's budget and
prediction. Run: `python benchmarks/unseen_models.py` (about 3 minutes on 2 cores)."""
import sys, copy, weakref, torch, torch.nn as nn, torch.nn.functional as F, fxckpt
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.profiler import profile, ProfilerActivity

class Meter(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.live = {}; self.cur = 0; self.peak = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage(); key = st.data_ptr()
                if key in self.live or st.nbytes() == 0: continue
                self.live[key] = st.nbytes(); self.cur += st.nbytes(); self.peak = max(self.peak, self.cur)
                def fin(k=key, n=st.nbytes()):
                    if self.live.pop(k, None) is not None: self.cur -= n
                weakref.finalize(st, fin)
        return out

def alloc_peak(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    evs = sorted([e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU], key=lambda e: e.start_ns())
    for e in evs:
        cur += e.nbytes(); peak = max(peak, cur)
    return peak

def call(m, inp):
    return m(**inp) if isinstance(inp, dict) else m(*inp)

def step(m, inp, loss_fn, seed):
    for p in m.parameters():
        if p.grad is None: p.grad = torch.zeros_like(p)
        else: p.grad.zero_()
    torch.manual_seed(seed)
    out = call(m, inp); loss = loss_fn(out); loss.backward()
    return loss.detach()

def check(name, make, inp, loss_fn, budgets):
    torch.manual_seed(0); ref = make(); ref.train()
    for b in budgets:
        m0 = copy.deepcopy(ref); m1 = copy.deepcopy(ref)
        try:
            c = fxckpt.auto_checkpoint(m1, inp, budget=b, loss_fn=loss_fn)
        except fxckpt.FxckptError as e:
            print(f"{name} {b}: {type(e).__name__}: {str(e)[:200]}"); continue
        l0 = step(m0, inp, loss_fn, 1); l1 = step(c, inp, loss_fn, 1)
        g = max((p0.grad - p1.grad).abs().max().item() for p0, p1 in zip(m0.parameters(), m1.parameters()))
        bufs = all(torch.equal(a, b_) for a, b_ in zip(m0.buffers(), m1.buffers()))
        sd = all(torch.equal(m0.state_dict()[k], m1.state_dict()[k]) for k in m0.state_dict())
        # allocator-level activation peak: step with grads allocated, minus nothing (grads exist already)
        def run(m):
            def f():
                out = call(m, inp); loss_fn(out).backward()
            return f
        for p in list(m0.parameters()) + list(m1.parameters()): p.grad.zero_()
        a0 = alloc_peak(run(m0)); a1 = alloc_peak(run(c))
        budget_b = getattr(c.plan, "budget_bytes", None)
        pred = c.plan.predicted_peak_bytes
        print(f"{name} budget={b}: loss eq {torch.equal(l0,l1)} grad maxdiff {g:.3g} buffers eq {bufs} state_dict eq {sd} | "
              f"alloc peak orig {a0/2**20:.3f} ckpt {a1/2**20:.3f} MiB; plan budget {budget_b/2**20:.3f} pred {pred/2**20:.3f} baseline {c.plan.baseline_peak_bytes/2**20:.3f} solver {c.plan.solver} gap {c.plan.optimality_gap}", flush=True)

if __name__ == "__main__":
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (4, 64)); mask = torch.ones(4, 64, dtype=torch.long); mask[:, 50:] = 0
    bert = lambda: BertForMaskedLM(BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, max_position_embeddings=128))
    check("bert-mlm", bert, {"input_ids": ids, "attention_mask": mask, "labels": ids}, lambda o: o.loss, [0.7, 0.4])
    t5 = lambda: T5ForConditionalGeneration(T5Config(vocab_size=500, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, decoder_start_token_id=0))
    check("t5", t5, {"input_ids": ids, "labels": ids[:, :32].contiguous()}, lambda o: o.loss, [0.7, 0.4])
    class CNN(nn.Module):
        def __init__(s):
            super().__init__()
            s.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.Hardswish())
            s.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(32, 32, 7, padding=3, groups=32), nn.BatchNorm2d(32), nn.Conv2d(32, 128, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(128, 32, 1)) for _ in range(4))
            s.head = nn.Linear(32, 10)
        def forward(s, x, y):
            h = s.stem(x)
            for b in s.blocks: h = h + b(h)
            return F.cross_entropy(s.head(F.adaptive_avg_pool2d(h, 1).flatten(1)), y)
    x = torch.randn(8, 3, 64, 64); y = torch.randint(0, 10, (8,))
    check("convnext-ish", CNN, (x, y), lambda o: o, [0.7, 0.4])
