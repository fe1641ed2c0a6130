from PIL import Image, ImageFilter
import random, glob
random.seed(7)
outs = []
for i, f in enumerate(sorted(glob.glob("work/scan-*.pgm"))):
    im = Image.open(f).convert("L").rotate(0.7 + i*0.3, resample=Image.BICUBIC, expand=False, fillcolor=255)
    im = im.filter(ImageFilter.GaussianBlur(0.6))
    px = im.load()
    w, h = im.size
    for _ in range(w*h//40):
        x, y = random.randrange(w), random.randrange(h)
        px[x, y] = max(0, min(255, px[x, y] + random.randint(-60, 60)))
    rgb = Image.merge("RGB", [im.point(lambda v: int(v*0.98)+3), im.point(lambda v: int(v*0.96)+5), im.point(lambda v: int(v*0.88)+10)])
    o = "work/scan-%d.jpg" % i; rgb.save(o, quality=75, dpi=(150,150)); outs.append(o)
print(outs)
