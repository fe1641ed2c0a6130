import cairo
s = cairo.PDFSurface("work/set/cairo-cjk.pdf", 595, 842)
c = cairo.Context(s)
c.select_font_face("WenQuanYi Micro Hei")
lines = ["深度求索光学字符识别：文档转换为标记语言", "", "第一章 概述",
 "本文档用于测试中文、日文和韩文文本的渲染。每一行都包含常见的汉字，", "以及标点符号，例如逗号、句号和引号“这样”。",
 "日本語のテキスト：これはテスト用の文章です。", "한국어 텍스트: 이것은 시험용 문장입니다.", "",
 "第二章 表格", "项目        数量      价格", "苹果        12        3.50", "香蕉        7         1.20",
 "Mixed English and 中文 in one line, with numbers 12345."]
y = 70
for i, l in enumerate(lines):
    c.set_font_size(20 if i in (0,) else 14)
    c.move_to(50, y); c.show_text(l); y += 30
c.rectangle(50, y, 495, 120); c.set_line_width(1); c.stroke()
c.set_source_rgb(0.2, 0.4, 0.8); c.rectangle(60, y+10, 200, 100); c.fill()
s.show_page()
c.set_source_rgb(0,0,0); c.set_font_size(12)
for k in range(40):
    c.move_to(50, 60 + k*18); c.show_text("第%d行：光学字符识别模型将页面图像转换为结构化文本。" % (k+1))
s.finish()
