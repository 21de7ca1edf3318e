"""The recovered trigger beside the true one, 8x nearest-neighbour, for docs/defend.md:

    python docs/defend-cifar10/figure.py defended   # the defend --out folder of the CIFAR-10 example
"""
import numpy as np
from PIL import Image, ImageDraw
from eftclip.attacks import create_trigger
import sys
run = f"{sys.argv[1]}/trigger"  # the defend output folder
true = create_trigger("badnet", size=6, position="bottom-right", pattern="noise").apply(
    np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))
rec_mask = np.asarray(Image.open(f"{run}/mask.png").convert("L")) > 0
rec_pat = np.asarray(Image.open(f"{run}/pattern.png").convert("RGB"))
panels = [("true mask", np.repeat(true.mask[..., None] * 255, 3, -1).astype(np.uint8)),
          ("true patch", true.image),
          ("recovered mask", np.repeat(rec_mask[..., None] * 255, 3, -1).astype(np.uint8)),
          ("recovered pattern x mask", (rec_pat * rec_mask[..., None]).astype(np.uint8))]
s, pad, top = 8, 12, 22
canvas = Image.new("RGB", (len(panels) * (32 * s + pad) + pad, 32 * s + top + pad), "white")
draw = ImageDraw.Draw(canvas)
for i, (title, arr) in enumerate(panels):
    x = pad + i * (32 * s + pad)
    canvas.paste(Image.fromarray(arr).resize((32 * s, 32 * s), Image.NEAREST), (x, top))
    draw.text((x, 4), title, fill="black")
canvas.save("docs/defend-cifar10/recovered_vs_true.png")
print(canvas.size, int(true.mask.sum()), int(rec_mask.sum()), int((true.mask & rec_mask).sum()))
