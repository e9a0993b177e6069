"""Models no test contains (BERT-MLM with a mask and labels, T5 with labels, a ConvNeXt-like CNN
with BatchNorm and Dropout2d), checked with meters of their own: gradients, buffers and
state_dict against the unmodified model, and the CPU allocator's peak read from the profiler's
flat kineto `[memory]` events (not through fxckpt.measure), against the plan's budget and
prediction. `check_more` adds the input's gradient, the outputs, a second step (dropout under
the same seed), the floor budget (`min_feasible_budget`), bf16 autocast (cache_enabled=False,
NOTE [ Casts autocast's cache would share ]), and flags a difference, buffers off, the allocator
over the budget, or the prediction (max of plan and dry run) off the allocator by more than 5%.
Run: `python benchmarks/unseen_models.py [more]` (the first set about 3 minutes on 2 cores, `more`
about 4: OPT, Mixtral, Falcon, DeBERTa-v2, Swin, Wav2Vec2, and hand-written nets)."""
import sys, copy, contextlib, weakref, torch, torch.nn as nn, torch.nn.functional as F, fxckpt
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only
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

def fresh(inp):
    return tree_map_only(torch.Tensor, lambda t: t.detach().clone().requires_grad_(t.requires_grad), inp)

def maxdiff(a, b):
    if a is None or b is None: return 0.0 if a is None and b is None else float("inf")
    if a.shape != b.shape: return float("inf")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0

def check_more(name, make, inp, loss_fn=None, budgets=(0.7, "floor"), autocast=False):
    """`check` with more meters (module docstring); `make` is called for each copy (a module
    with old-style weight_norm cannot be deep-copied)."""
    loss_fn = loss_fn or fxckpt.step_loss
    ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)) if autocast else contextlib.nullcontext
    name += " bf16" if autocast else ""
    def new():
        torch.manual_seed(0); m = make()
        return m if getattr(m, "keep_mode", False) else m.train()
    def run_step(m, i, seed):
        for p in m.parameters():
            if p.requires_grad: p.grad = torch.zeros_like(p)
        torch.manual_seed(seed)
        with ac():
            out = call(m, i); loss = loss_fn(out)
        loss.backward()
        return [loss.detach()] + [t.detach() for t in tree_flatten(out.to_tuple() if hasattr(out, "to_tuple") else out)[0] if isinstance(t, torch.Tensor)]
    for b in budgets:
        m0, m1, i0, i1 = new(), new(), fresh(inp), fresh(inp)
        try:
            with ac():
                mb = fxckpt.min_feasible_budget(new(), inp, loss_fn=loss_fn) / 2**20 if b == "floor" else None
                c = fxckpt.auto_checkpoint(m1, i1, budget_mb=mb, budget=None if b == "floor" else b, loss_fn=loss_fn)
        except fxckpt.FxckptError as e:
            print(f"{name} {b}: {type(e).__name__}: {str(e)[:160]}", flush=True); continue
        diff, bufs = 0.0, True
        for seed in (1, 2):
            o0, o1 = run_step(m0, i0, seed), run_step(c, i1, seed)
            diff = max([diff] + [maxdiff(x, y) for x, y in zip(o0, o1)] + [maxdiff(p.grad, q.grad) for p, q in zip(m0.parameters(), m1.parameters())]
                       + [maxdiff(x.grad, y.grad) for x, y in zip(tree_flatten(i0)[0], tree_flatten(i1)[0]) if isinstance(x, torch.Tensor) and x.requires_grad])
            bufs &= all(torch.equal(x, y) for x, y in zip(m0.buffers(), m1.buffers())) and all(torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
        for t in [p.grad for p in m1.parameters() if p.grad is not None] + [t.grad for t in tree_flatten(i1)[0] if isinstance(t, torch.Tensor) and t.grad is not None]:
            t.zero_()
        def f():
            with ac():
                out = call(c, i1); loss = loss_fn(out)
            loss.backward()
        alloc, plan = alloc_peak(f), c.plan
        pred = max(plan.predicted_peak_bytes, plan.dry_run_peak_bytes or 0)
        flags = [f for f, bad in (("DIFF", diff and not autocast), ("BUFFERS", not bufs), ("OVER", alloc > plan.budget_bytes),
                                  ("PREDICTION", abs(pred - alloc) > 0.05 * alloc)) if bad]
        print(f"{name} budget={b}: max diff {diff:.3g} (loss, outputs, grads, input grads; 2 steps) buffers eq {bufs} | "
              f"allocator {alloc:,} B, budget {plan.budget_bytes:,} B, predicted {pred:,} B ({100 * (pred - alloc) / alloc:+.1f}%) "
              f"{' '.join(flags)}", flush=True)

def more():
    import transformers as T
    from torch.nn.utils import weight_norm
    torch.manual_seed(0)
    V = 300; ids = torch.randint(0, V, (2, 32)); mask = torch.ones(2, 32, dtype=torch.long); mask[1, 24:] = 0
    lm = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=V, max_position_embeddings=64)
    check_more("opt", lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64, dropout=0.1, attention_dropout=0.1)), lm)
    mixtral = lambda: T.MixtralForCausalLM(T.MixtralConfig(**small, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True))
    check_more("mixtral", mixtral, lm, budgets=(0.5,))
    check_more("mixtral", mixtral, lm, budgets=("floor",), autocast=True)
    check_more("falcon", lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.1, attention_dropout=0.1, new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False)), lm)
    check_more("deberta-v2", lambda: T.DebertaV2ForMaskedLM(T.DebertaV2Config(**small, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32)), lm, budgets=(0.5,))
    check_more("swin", lambda: T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5, drop_path_rate=0.1, hidden_dropout_prob=0.1)),
               {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 3])}, budgets=(0.5,), autocast=True)
    w2v = T.Wav2Vec2Config(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group", mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.1)
    check_more("wav2vec2", lambda: T.Wav2Vec2Model(w2v), {"input_values": torch.randn(2, 4000)}, lambda o: o.last_hidden_state.pow(2).mean(), budgets=(1.0, 0.7, "floor"))

    class TCN(nn.Module):
        def __init__(s):
            super().__init__()
            s.convs = nn.ModuleList(weight_norm(nn.Conv1d(16, 16, 3, padding=2 ** i, dilation=2 ** i)) for i in range(4))
            s.drop = nn.Dropout(0.2); s.head = nn.Conv1d(16, 4, 1)
        def forward(s, x):
            for c in s.convs: x = x + s.drop(F.relu(c(x)))
            return s.head(x)
    check_more("tcn-weight-norm", TCN, (torch.randn(4, 16, 256, requires_grad=True),))
    class UNet(nn.Module):
        def __init__(s):
            super().__init__()
            blk = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())
            s.d1, s.d2, s.mid, s.u2, s.u1, s.out = blk(3, 16), blk(16, 32), blk(32, 32), blk(64, 16), blk(32, 16), nn.Conv2d(16, 3, 1)
        def forward(s, x):
            h1 = s.d1(x); h2 = s.d2(F.max_pool2d(h1, 2)); m = s.mid(F.avg_pool2d(h2, 2))
            u = s.u2(torch.cat([F.interpolate(m, scale_factor=2, mode="nearest"), h2], 1))
            return s.out(s.u1(torch.cat([F.interpolate(u, size=h1.shape[-2:], mode="bilinear", align_corners=False), h1], 1)))
    check_more("groupnorm-unet", UNet, (torch.randn(2, 3, 32, 32),), budgets=(0.7,), autocast=True)
    class Frozen(nn.Module):  # frozen stem and a BatchNorm in eval inside a training model
        keep_mode = True
        def __init__(s):
            super().__init__()
            s.stem, s.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            s.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
            s.head = nn.Linear(16, 10)
            for p in list(s.stem.parameters()) + list(s.bn.parameters()): p.requires_grad_(False)
            s.train(); s.bn.eval()
        def forward(s, x):
            h = F.relu(s.bn(s.stem(x)))
            return s.head((h + s.body(h)).mean((2, 3)))
    check_more("frozen-bn-eval", Frozen, (torch.randn(4, 3, 16, 16, requires_grad=True),), budgets=(1.0, "floor"))
    class Views(nn.Module):  # in-place ops on views, a boolean-mask assignment, where/masked_fill, a dict output
        def __init__(s):
            super().__init__(); s.a, s.b = nn.Linear(32, 32), nn.Linear(32, 32)
        def forward(s, x, mask):
            h = s.a(x); h[:, :4] *= 2; h[:, 4:8].add_(1.0); h.view(-1, 8, 4).mul_(0.5)
            h2 = s.b(torch.where(h > 0, h, 0.1 * h).masked_fill(mask, float("-inf")).softmax(-1)).relu() * 1.0
            h2[h2 > 0.1] = 0.1
            return {"y": h2, "aux": [h2.mean()]}
    check_more("in-place-views", Views, (torch.randn(16, 32, requires_grad=True), torch.rand(16, 32) > 0.3), lambda o: o["y"].sum() + o["aux"][0], budgets=(1.0, "floor"))
    class Bag(nn.Module):
        def __init__(s):
            super().__init__(); s.bag = nn.EmbeddingBag(200, 32, mode="sum")
            s.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 1))
        def forward(s, ids, use_norm: bool = True, repeat: int = 2):
            h = s.bag(ids)
            for _ in range(repeat): h = F.layer_norm(h, h.shape[-1:]) if use_norm else h
            return s.mlp(h)
    check_more("embedding-bag-kwargs", Bag, {"ids": torch.randint(0, 200, (8, 6)), "use_norm": True, "repeat": 2}, budgets=(1.0, "floor"))

if __name__ == "__main__" and sys.argv[1:] == ["more"]:
    more()
elif __name__ == "__main__":
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
