package android.widget;

public class ScrollView extends FrameLayout {
    public ScrollView() { throw new RuntimeException("Stub!"); }
    public boolean fullScroll(int direction) { throw new RuntimeException("Stub!"); }
}
